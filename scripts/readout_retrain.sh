#!/usr/bin/env bash
# Issue #31: retrained scores per readout at equal parameters, one seed's arms (run one process per seed):
#   scripts/readout_retrain.sh SEED [OUT]      (OUT: outputs/readout_retrain; PY: .venv/bin/python)
# The search + its retrain at the gates readout (method=autolora), then a retrain at each other readout's ranks
# from that ranks.json (search.ranks_readout), skipped where the ranks equal an arm already run (same ranks,
# seed and recipe train the same model; analysis.readout_retrain pairs them by ranks), and uniform LoRA r=4, r=2.
# Recipe: experiment=smoke_sst2_minilm (512 rows of the packaged SST-2 sample, its committed learning rates) on
# the full SST-2 dev set; the table: python -m autolora.analysis.readout_retrain OUT.
# SEARCH="search.alpha_norm=global_softmax" adds overrides to the search; UNIFORM=0 skips the uniform LoRA arms
# (another search variant on the same recipe and seeds pairs with the uniform runs already made), UNIFORM=only
# runs them alone.
# RECIPE="experiment=minilm_glue_rte data.data_dir=DIR" replaces the recipe; READOUTS="budget" the readouts
# retrained (default: budget energy released). A run whose folder holds metrics.json is skipped and one with
# only its config.yaml resumes (resume=true), so a script stopped by SIGTERM (the runs checkpoint) continues;
# while the file STOP_FILE exists no new run starts.
set -u
seed=$1
D=${2:-outputs/readout_retrain}/s$seed
PY=${PY:-.venv/bin/python}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
RECIPE=${RECIPE:-experiment=smoke_sst2_minilm data.max_eval_samples=null}
C="$RECIPE logger=none progress=false search.evaluate=false seed=$seed"
mkdir -p "$D"
run() {
  name=$1; shift
  [ -f "$D/$name/metrics.json" ] && { echo "$name seed $seed: finished before"; return 0; }
  [ -n "${STOP_FILE:-}" ] && [ -e "$STOP_FILE" ] && return 1  # a caller's deadline: start nothing new
  resume=false; [ -f "$D/$name/config.yaml" ] && resume=true
  started=$SECONDS
  # shellcheck disable=SC2086
  nice -n 10 "$PY" -m autolora $C "$@" resume=$resume hydra.run.dir="$D/$name" >> "$D/$name.log" 2>&1
  rc=$?
  echo "$name seed $seed: rc $rc, $((SECONDS - started)) s; $(tail -1 "$D/$name.log")"
  [ -f "$D/$name/metrics.json" ]  # a run stopped midway stops its chain: the next readout needs its ranks.json
}
if [ "${UNIFORM:-1}" = only ]; then  # the uniform arms alone (a caller runs the searches in other processes)
  run lora_r4 method=lora lora.r=4 || exit 1
  run lora_r2 method=lora lora.r=2; exit
fi
# shellcheck disable=SC2086
run gates method=autolora ${SEARCH:-} || exit 1
for r in ${READOUTS:-budget energy released}; do
  same=$("$PY" - "$D" "$r" <<'PY'
import json, sys, pathlib
d, r = pathlib.Path(sys.argv[1]), sys.argv[2]
want = json.loads((d / "gates" / "ranks.json").read_text())["readouts"][r]
for m in sorted(d.glob("*/metrics.json")):
    if json.loads(m.read_text())["ranks"] == want:
        print(m.parent.name); break
PY
)
  if [ -n "$same" ]; then echo "$r seed $seed: same ranks as $same, not rerun"; continue; fi
  run "$r" method=autolora search.ranks_file="$D/gates/ranks.json" search.ranks_readout="$r" || exit 1
  if [ "$r" = budget ] && [ "${UNIFORM:-1}" = 1 ]; then run lora_r4 method=lora lora.r=4; run lora_r2 method=lora lora.r=2; fi
done
