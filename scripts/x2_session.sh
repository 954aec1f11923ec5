#!/usr/bin/env bash
# One device call on 2 GPUs (nvidia-h100-x2), repo root, after the .whl/.models/.data carry:
# 1. DDP agreement and scaling (issue 9): torchrun -m autolora.bench_ddp -> $OUT/distributed.{json,md}
# 2. MiniLM SST-2 full data, seed 0 (issue 8): the AutoLoRA pipeline and the uniform-rank grid r in {1,2,4,8,16},
#    every run alone on its GPU, so their wall times compare. Packs everything by $DEADLINE s.
set -uo pipefail
OUT=${OUT:-/tmp/out}; RUNS=${RUNS:-/tmp/runs_x2}; DEADLINE=${DEADLINE:-540}
. scripts/device_env.sh || exit 1
mkdir -p "$RUNS" "$OUT"
nvidia-smi -L
timeout 200 torchrun --standalone --nproc_per_node 2 -m autolora.bench_ddp --out "$OUT/distributed" > "$OUT/bench_ddp.log" 2>&1
tail -n 25 "$OUT/bench_ddp.log"
bash scripts/make_glue_specs.sh "sst2" "0" "" > /tmp/specs_sst2.txt
sequence() {  # GPU, then run names from the spec file, one after the other
  local gpu=$1; shift
  for name in "$@"; do
    # shellcheck disable=SC2046
    CUDA_VISIBLE_DEVICES=$gpu python3 run.py $(grep "^$name " /tmp/specs_sst2.txt | cut -d' ' -f2-) logger=none \
      progress=false hydra.run.dir="$RUNS/$name" > "$RUNS/$name.log" 2>&1
  done
}
sequence 0 sst2-autolora-s0 sst2-lora_r16-s0 sst2-lora_r8-s0 &
sequence 1 sst2-lora_r1-s0 sst2-lora_r2-s0 sst2-lora_r4-s0 &
while [ "$SECONDS" -lt "$DEADLINE" ] && [ -n "$(jobs -rp)" ]; do sleep 5; done
for d in "$RUNS"/*/; do [ -f "$d/metrics.json" ] && echo "done $(basename "$d")" || echo "OPEN $(basename "$d")"; done
tar -czf "$OUT/x2_runs.tgz" -C "$RUNS" --exclude=adapter --exclude=base_model --exclude=.hydra --exclude='*.pt' .
