#!/usr/bin/env bash
# Issue 19's search-budget study as parallel_runs.sh spec lines (NAME overrides...): MiniLM, AutoLoRA with the
# task-default search, with 20 search epochs at the paper's alpha learning rate (1e-3) and at the released
# code's (3e-4); the retrain keeps the task default. Seed-major, so that a run cut off still has whole seeds.
# Usage: bash scripts/make_study_specs.sh "cola mrpc rte stsb" "0 1 2" > specs.txt
set -euo pipefail
TASKS=$1; SEEDS=$2
common="model=minilm data.data_dir=.data log_every=200 search.evaluate=false"
for seed in $SEEDS; do for task in $TASKS; do
  echo "$task-autolora-s$seed task=glue/$task method=autolora seed=$seed $common"
  echo "$task-autolora_e20-s$seed task=glue/$task method=autolora seed=$seed search.epochs=20 $common"
  echo "$task-autolora_e20_alr3e-4-s$seed task=glue/$task method=autolora seed=$seed search.epochs=20 search.alpha_lr=3e-4 $common"
done; done
