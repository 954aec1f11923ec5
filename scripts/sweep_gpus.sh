#!/usr/bin/env bash
# Spread a parallel_runs.sh spec file over every visible GPU: spec line i goes to GPU i mod N, and each GPU
# runs its lines through parallel_runs.sh, at most $JOBS at a time (default 6: MiniLM runs are host-bound).
# Run dirs go to $RUNS/NAME (shared by the GPUs, so no per-GPU pack: the caller packs $RUNS once);
# parallel_runs.sh skips finished runs and resumes unfinished ones.
# Usage (device tool, after `. scripts/device_env.sh`): RUNS=/tmp/runs bash scripts/sweep_gpus.sh specs.txt [overrides]
set -uo pipefail
SPECS=$1; shift
RUNS=${RUNS:-/tmp/runs}; JOBS=${JOBS:-6}; DEADLINE=${DEADLINE:-3000}
n=${NGPU:-$(nvidia-smi -L | wc -l)}
split=$(mktemp -d); mkdir -p "$RUNS"
grep -v -e '^#' -e '^[[:space:]]*$' "$SPECS" | awk -v n="$n" -v d="$split" '{ print > (d "/gpu" ((NR - 1) % n) ".txt") }'
for file in "$split"/gpu*.txt; do
  g=$(basename "$file" .txt); g=${g#gpu}
  CUDA_VISIBLE_DEVICES=$g RUNS=$RUNS OUT=$split JOBS=$JOBS DEADLINE=$DEADLINE PACK= \
    bash scripts/parallel_runs.sh "$file" "$@" > "$split/gpu$g.log" 2>&1 &
done
wait
for dir in "$RUNS"/*/; do [ -f "$dir/metrics.json" ] && echo "done  $(basename "$dir")" || echo "OPEN  $(basename "$dir")"; done
