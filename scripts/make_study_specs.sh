#!/usr/bin/env bash
# Issue 19's search-budget study as parallel_runs.sh spec lines (NAME overrides...): MiniLM on each task and
# seed, AutoLoRA with 20 search epochs at the paper's alpha learning rate (1e-3), with the task-default search
# (1-3 epochs), with 20 search epochs at the released code's alpha learning rate (3e-4), and uniform LoRA r=4
# and r=8; every arm keeps the task-default retrain, so the retrained scores compare at equal retrain budget.
# Lines come in priority order, longest runs first within an arm, so that a run cut off by the device budget
# loses the least important arm and the GPU is not left with one long straggler.
# Usage: bash scripts/make_study_specs.sh "cola stsb mrpc rte" "0 1 2" > specs.txt
set -euo pipefail
TASKS=$1; SEEDS=$2
common="model=minilm data.data_dir=.data log_every=200 search.evaluate=false"
arm() {  # arm NAME OVERRIDES...
  local name=$1; shift
  for task in $TASKS; do for seed in $SEEDS; do
    echo "$task-$name-s$seed task=glue/$task seed=$seed $* $common"
  done; done
}
arm autolora_e20 method=autolora search.epochs=20
arm autolora method=autolora
arm autolora_e20_alr3e-4 method=autolora search.epochs=20 search.alpha_lr=3e-4
arm lora_r4 method=lora lora.r=4
arm lora_r8 method=lora lora.r=8
