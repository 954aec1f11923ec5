#!/usr/bin/env bash
# Issue 8's pipeline-vs-grid timing on MiniLM / SST-2 full data, seed 0: the AutoLoRA pipeline and the
# uniform-rank grid r in {1,2,4,8,16}, every run alone on its GPU so that their wall times compare.
# Each argument is one GPU's queue (GPU 0, 1, ...): run names from make_glue_specs.sh, comma-separated, run in turn.
# $EXTRA: overrides added to every run (e.g. "debug=tiny" to try the script on CPU).
# Usage (device tool, after `. scripts/device_env.sh`):
#   RUNS=/tmp/timing bash scripts/pipeline_vs_grid.sh sst2-autolora-s0 sst2-lora_r1-s0,sst2-lora_r2-s0 ...
set -uo pipefail
RUNS=${RUNS:-/tmp/timing}; DATA=${DATA:-.data}; EXTRA=${EXTRA:-}
mkdir -p "$RUNS"
specs=$(bash scripts/make_glue_specs.sh sst2 0 "" | sed "s#data.data_dir=[^ ]*#data.data_dir=$DATA#")
gpu=0
for queue in "$@"; do
  for name in ${queue//,/ }; do
    grep -q "^$name " <<<"$specs" || { echo "pipeline_vs_grid.sh: unknown run name '$name'" >&2; exit 2; }
  done
  ( for name in ${queue//,/ }; do
      # shellcheck disable=SC2046,SC2086
      CUDA_VISIBLE_DEVICES=$gpu python3 run.py $(grep "^$name " <<<"$specs" | cut -d' ' -f2-) $EXTRA \
        logger=none progress=false hydra.run.dir="$RUNS/$name" > "$RUNS/$name.log" 2>&1
    done ) &
  gpu=$((gpu + 1))
done
wait
for name in ${*//,/ }; do
  [ -f "$RUNS/$name/metrics.json" ] && echo "done  $name" || { echo "FAIL  $name"; tail -3 "$RUNS/$name.log"; }
done
