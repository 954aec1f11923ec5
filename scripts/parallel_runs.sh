#!/usr/bin/env bash
# Run many autolora jobs in parallel on one GPU machine (small models leave an H100 mostly idle).
# SPECS: a file with one run per line: NAME then its overrides (e.g. "rte-lora-s1 task=glue/rte method=lora seed=1").
# At most $JOBS runs at a time (default: all at once), in file order; a run whose directory already holds
# metrics.json is skipped, and an unfinished one resumes from its checkpoint (resume=true).
# Run dirs go to $RUNS/NAME; after all finish or $DEADLINE seconds, the small files are packed into $OUT/$PACK
# (PACK= empty: no pack, for a caller that packs itself).
# Usage (repo root, device tool): RUNS=/tmp/runs PACK=runs.tgz JOBS=8 bash scripts/parallel_runs.sh specs.txt [overrides]
set -uo pipefail
SPECS=$1; shift
RUNS=${RUNS:-/tmp/runs}; OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-540}; PACK=${PACK-runs.tgz}; JOBS=${JOBS:-1000}
mkdir -p "$RUNS" "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$SECONDS
while read -r name args; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  [ -f "$RUNS/$name/metrics.json" ] && continue
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  [ $((SECONDS - start)) -ge "$DEADLINE" ] && break
  resume=false; [ -f "$RUNS/$name/config.yaml" ] && resume=true
  # shellcheck disable=SC2086
  python3 -m autolora $args "$@" logger=none progress=false resume=$resume hydra.run.dir="$RUNS/$name" \
    >> "$RUNS/$name.log" 2>&1 &
done < "$SPECS"
while [ $((SECONDS - start)) -lt "$DEADLINE" ] && [ -n "$(jobs -rp)" ]; do sleep 5; done
for dir in "$RUNS"/*/; do
  name=$(basename "$dir")
  [ -f "$dir/metrics.json" ] && echo "done  $name" || { echo "OPEN  $name"; tail -3 "$RUNS/$name.log"; }
done
[ -z "$PACK" ] || tar -czf "$OUT/$PACK" -C "$RUNS" --exclude='adapter' --exclude='base_model' --exclude='.hydra' --exclude='wandb' .
