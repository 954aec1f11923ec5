#!/usr/bin/env bash
# Issues #27/#31 on the borrowed GPU: readouts retrained at equal parameters on MiniLM GLUE at the task defaults,
# per search variant (VARIANTS; by default the paper's per-matrix softmax and one softmax across all matrices),
# next to uniform LoRA r=2 and r=4.
# After `bash scripts/device_matrix.sh stash` calls (a bundle made with MODELS="minilm=... ...") and `install`:
#   bash scripts/device_readouts.sh SECONDS            (TASKS, SEEDS, JOBS: below)
# Per (variant, task, seed) one chain of scripts/readout_retrain.sh (search + gates retrain, then the budget
# readout's retrain), per (task, seed) the two uniform runs; in TASKS order (the default: longest first), JOBS
# at a time. At SECONDS the runs get SIGTERM (they checkpoint; the next call resumes them). $OUT/readouts.tgz:
# the finished runs' small files under VARIANT/TASK/sSEED/ARM; the tables: python -m autolora.analysis.readout_grid
# ROOT (pooled over tasks), python -m autolora.analysis.readout_retrain ROOT/VARIANT/TASK (one task).
# Tested on CPU at 64 rows: tests/analysis/test_readout_scripts.py (slow).
set -uo pipefail
seconds=${1:?usage: device_readouts.sh SECONDS}
TASKS=${TASKS:-cola stsb mrpc rte}; SEEDS=${SEEDS:-0 1 2}; JOBS=${JOBS:-12}
# the search variants, NAME:OVERRIDES (overrides joined by ';'), space-separated; `softmax` (the paper's search)
# must be one: the uniform arms sit beside it. E.g. VARIANTS="softmax: warmup:search.alpha_warmup=0.3"
VARIANTS=${VARIANTS:-softmax: global_softmax:search.alpha_norm=global_softmax}
case " $VARIANTS " in *" softmax:"*) ;; *) echo "device_readouts.sh: VARIANTS must hold softmax:" >&2; exit 2;; esac
# where the bundle's install put things (a CPU try-out: PY=.venv/bin/python DATA_DIR=... MODEL_PATH=pkg://...
# EXTRA="data.max_train_samples=64 data.max_eval_samples=64" ROOT=/tmp/rr-try OUT=/tmp/out)
DATA_DIR=${DATA_DIR:-/tmp/joined/data}; MODEL_PATH=${MODEL_PATH:-/tmp/joined/models/minilm}
root=${ROOT:-/tmp/rr}; mkdir -p $root
export PY=${PY:-/tmp/venv/bin/python} TQDM_DISABLE=1 PYTHONUNBUFFERED=1 STOP_FILE=$root/STOP
rm -f $STOP_FILE
start=$(date +%s)
jobs_file=$root/jobs.txt; : > $jobs_file
for t in $TASKS; do for s in $SEEDS; do
  recipe="experiment=minilm_glue_$t data.data_dir=$DATA_DIR model.path=$MODEL_PATH ${EXTRA:-}"
  for v in $VARIANTS; do echo "${v%%:*}|$t|$s|$recipe|${v#*:}" | tr ';' ' ' >> $jobs_file; done
  echo "uniform|$t|$s|$recipe|" >> $jobs_file
done; done
one() {  # VARIANT|TASK|SEED|RECIPE|SEARCH
  IFS='|' read -r variant t s recipe search <<< "$1"
  if [ "$variant" = uniform ]; then  # beside the per-matrix softmax searches, whose folder they share
    RECIPE="$recipe" UNIFORM=only bash scripts/readout_retrain.sh "$s" "$root/softmax/$t"
  else
    RECIPE="$recipe" SEARCH="$search" READOUTS=budget UNIFORM=0 bash scripts/readout_retrain.sh "$s" "$root/$variant/$t"
  fi
}
export -f one; export root
xargs -d '\n' -P "$JOBS" -I{} bash -c 'one "$@"' _ {} < $jobs_file > $root/driver.log 2>&1 &
driver=$!
while kill -0 $driver 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$seconds" ]; do sleep 5; done
if kill -0 $driver 2>/dev/null; then
  touch $STOP_FILE  # first: a chain whose run is stopped must not start its next one
  pkill -TERM -f "autolora experiment=minilm_glue"  # each run saves a checkpoint on SIGTERM
  for _ in $(seq 20); do pgrep -f "autolora experiment=minilm_glue" >/dev/null || break; sleep 1; done
  pkill -KILL -f "autolora experiment=minilm_glue"; kill $driver 2>/dev/null
fi
wait $driver 2>/dev/null
tail -5 $root/driver.log
echo "finished runs: $(find $root -name metrics.json | wc -l)"
rm -rf /tmp/rr_collected && mkdir -p /tmp/rr_collected
$PY -c "import sys; from pathlib import Path; from autolora.cli.reproduce import collect
print(collect(Path(sys.argv[1]), Path(sys.argv[2])), 'finished readout runs collected')" $root /tmp/rr_collected
tar czf "$OUT/readouts.tgz" -C /tmp/rr_collected . && ls -la "$OUT/readouts.tgz"
