#!/usr/bin/env bash
# Print the GLUE/MiniLM matrix of issue 7 as parallel_runs.sh spec lines (NAME overrides...):
# AutoLoRA, LoRA r in {1,2,4,8,16}, AdaLoRA for each task and seed, and the PAPER §5 ablations on ABLATE.
# Usage: bash scripts/make_glue_specs.sh "cola mrpc rte stsb" "0 1 2" "mrpc rte" > specs.txt
set -euo pipefail
TASKS=$1; SEEDS=$2; ABLATE=${3:-}
common="model=minilm data.data_dir=.data log_every=200"
for seed in $SEEDS; do for task in $TASKS; do  # seed-major: a cut-off run still has whole seeds
  echo "$task-autolora-s$seed task=glue/$task method=autolora seed=$seed $common"
  for r in 1 2 4 8 16; do echo "$task-lora_r$r-s$seed task=glue/$task method=lora lora.r=$r seed=$seed $common"; done
  echo "$task-adalora-s$seed task=glue/$task method=adalora seed=$seed $common"
done; done
for seed in $SEEDS; do for task in $ABLATE; do for ablation in first_order sigmoid no_sum; do
  echo "$task-$ablation-s$seed task=glue/$task method=autolora search=$ablation seed=$seed $common"
done; done; done
