#!/usr/bin/env bash
# Run many autolora jobs in parallel on one GPU machine (small models leave an H100 mostly idle).
# SPECS: a file with one run per line: NAME then its overrides (e.g. "rte-lora-s1 task=glue/rte method=lora seed=1").
# Run dirs go to $RUNS/NAME; after all finish or $DEADLINE seconds, the small files are packed into $OUT/$PACK.
# Usage (repo root, device tool): RUNS=/tmp/runs PACK=runs.tgz bash scripts/parallel_runs.sh specs.txt [common overrides]
set -uo pipefail
SPECS=$1; shift
RUNS=${RUNS:-/tmp/runs}; OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-540}; PACK=${PACK:-runs.tgz}
mkdir -p "$RUNS" "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
pids=()
while read -r name args; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  # shellcheck disable=SC2086
  python3 run.py $args "$@" logger=none progress=false hydra.run.dir="$RUNS/$name" > "$RUNS/$name.log" 2>&1 &
  pids+=($!)
done < "$SPECS"
start=$SECONDS
while [ $((SECONDS - start)) -lt "$DEADLINE" ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 5; done
for dir in "$RUNS"/*/; do
  name=$(basename "$dir")
  [ -f "$dir/metrics.json" ] && echo "done  $name" || { echo "OPEN  $name"; tail -3 "$RUNS/$name.log"; }
done
tar -czf "$OUT/$PACK" -C "$RUNS" --exclude='adapter' --exclude='base_model' --exclude='.hydra' --exclude='wandb' .
