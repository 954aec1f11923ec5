#!/usr/bin/env bash
# Full-data GLUE with MiniLM on one GPU: AutoLoRA and LoRA r=8 for each task and seed, all in parallel.
# Usage (repo root, device tool): bash scripts/glue_minilm.sh "sst2 cola mrpc rte stsb" "0 1" [extra overrides]
set -uo pipefail
TASKS=${1:-"sst2 cola mrpc rte stsb"}; SEEDS=${2:-0}; shift 2 || true
specs=$(mktemp)
for task in $TASKS; do for method in autolora lora; do for seed in $SEEDS; do
  echo "$task-$method-s$seed task=glue/$task model=minilm method=$method seed=$seed data.data_dir=.data log_every=200"
done; done; done > "$specs"
PACK=${PACK:-glue_runs.tgz} DEADLINE=${DEADLINE:-540} bash "$(dirname "$0")/parallel_runs.sh" "$specs" "$@"
