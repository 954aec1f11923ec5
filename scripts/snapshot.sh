#!/usr/bin/env bash
# Device tool: wait until the detached session's log says SESSION_DONE or $WAIT seconds pass, then pack the
# small files of every run folder (no adapters, checkpoints or Hydra copies) into $OUT/snapshot.tgz.
# Usage: WAIT=540 bash scripts/snapshot.sh /tmp/timing /tmp/runs
set -uo pipefail
WAIT=${WAIT:-540}; LOG=${LOG:-/tmp/session.log}; OUT=${OUT:-/tmp/out}
start=$SECONDS
until grep -q SESSION_DONE "$LOG" 2>/dev/null || [ $((SECONDS - start)) -ge "$WAIT" ]; do sleep 10; done
tail -n 30 "$LOG"
echo "run folders: $(find "$@" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l); $(find "$@" -name metrics.json 2>/dev/null | wc -l) finished (metrics.json)"
mkdir -p "$OUT"; cp "$LOG" "$OUT/"
tar -czf "$OUT/snapshot.tgz" --exclude=adapter --exclude=base_model --exclude=.hydra --exclude='*.pt' --exclude=wandb "$@"
