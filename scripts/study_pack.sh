#!/usr/bin/env bash
# Wait up to $1 seconds (default 500) for scripts/study_session.sh to finish, then pack every finished run's
# small files (no adapters, checkpoints, Hydra or W&B folders) into $OUT/study.tgz and list the unfinished ones.
# Call it again on the same warm machine to collect more.
set -uo pipefail
WAIT=${1:-500}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
end=$((SECONDS + WAIT))
while [ $SECONDS -lt $end ] && ! grep -q STUDY_DONE /tmp/study.log 2>/dev/null; do sleep 5; done
cd /tmp/study || exit 1
done_runs=$(for d in */; do [ -f "$d/metrics.json" ] && echo "${d%/}"; done)
tar -czf "$OUT/study.tgz" --exclude=adapter --exclude=base_model --exclude=.hydra --exclude=wandb \
  --exclude='*.pt' --exclude='checkpoint*' $done_runs
echo "finished $(echo "$done_runs" | grep -c .) of $(wc -l < /tmp/specs_study.txt); open:"
for d in */; do [ -f "$d/metrics.json" ] || echo "  ${d%/} $(tail -c 300 "/tmp/study/${d%/}.log" | tr '\n' ' ' | tail -c 160)"; done
tail -3 /tmp/study.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
