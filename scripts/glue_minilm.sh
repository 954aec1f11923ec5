#!/usr/bin/env bash
# Full-data GLUE with MiniLM on one GPU: AutoLoRA and LoRA r=8 on each task, all runs in parallel
# (MiniLM leaves an H100 mostly idle). Run dirs under $RUNS; a tarball of their small files to $OUT.
# Usage (repo root, device tool): bash scripts/glue_minilm.sh "sst2 cola mrpc rte stsb" "0" [extra overrides]
set -uo pipefail
TASKS=${1:-"sst2 cola mrpc rte stsb"}; SEEDS=${2:-0}; shift 2 || true
RUNS=${RUNS:-/tmp/runs}; OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-540}
mkdir -p "$RUNS" "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # ten processes share 16 cores
pids=()
for task in $TASKS; do for method in autolora lora; do for seed in $SEEDS; do
  name=$task-$method-s$seed
  python3 run.py task=glue/$task model=minilm method=$method seed=$seed data.data_dir=.data/glue \
    logger=none progress=false log_every=200 hydra.run.dir="$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1 &
  pids+=($!)
done; done; done
start=$SECONDS
while [ $((SECONDS - start)) -lt "$DEADLINE" ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 5; done
for name in $(cd "$RUNS" && ls -d */ | tr -d /); do
  [ -f "$RUNS/$name/metrics.json" ] && echo "done  $name" || { echo "OPEN  $name"; tail -3 "$RUNS/$name.log"; }
done
tar -czf "$OUT/glue_runs.tgz" -C "$RUNS" --exclude='adapter' --exclude='base_model' --exclude='.hydra' .
