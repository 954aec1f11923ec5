#!/usr/bin/env bash
# One device call on 2 GPUs (nvidia-h100-x2), repo root, after the .whl/.models/.data carry:
# 1. DDP agreement and scaling (issue 9): torchrun -m autolora.bench_ddp -> $OUT/distributed.{json,md}
# 2. MiniLM SST-2 full data, seed 0 (issue 8): the AutoLoRA pipeline and the uniform-rank grid r in {1,2,4,8,16},
#    every run alone on its GPU (scripts/pipeline_vs_grid.sh), so their wall times compare. Packs by $DEADLINE s.
set -uo pipefail
OUT=${OUT:-/tmp/out}; RUNS=${RUNS:-/tmp/runs_x2}; DEADLINE=${DEADLINE:-540}
. scripts/device_env.sh || exit 1
mkdir -p "$RUNS" "$OUT"
nvidia-smi -L
timeout 200 torchrun --standalone --nproc_per_node 2 -m autolora.bench_ddp --out "$OUT/distributed" > "$OUT/bench_ddp.log" 2>&1
tail -n 25 "$OUT/bench_ddp.log"
RUNS=$RUNS timeout $((DEADLINE - SECONDS)) bash scripts/pipeline_vs_grid.sh \
  sst2-autolora-s0,sst2-lora_r16-s0,sst2-lora_r8-s0 sst2-lora_r1-s0,sst2-lora_r2-s0,sst2-lora_r4-s0
for d in "$RUNS"/*/; do [ -f "$d/metrics.json" ] && echo "done $(basename "$d")" || echo "OPEN $(basename "$d")"; done
tar -czf "$OUT/x2_runs.tgz" -C "$RUNS" --exclude=adapter --exclude=base_model --exclude=.hydra --exclude='*.pt' .
