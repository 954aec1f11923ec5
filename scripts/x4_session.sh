#!/usr/bin/env bash
# One session on a 4-GPU machine (device tool, nvidia-h100-x4 / nvidia-h200-x4), started detached so that it
# outlives each call (the machine stays held while calls follow one another):
#   cp -r . /tmp/repo && cd /tmp/repo && (setsid nohup bash scripts/x4_session.sh > /tmp/session.log 2>&1 &)
# 1. Issue 8: SST-2 pipeline vs uniform-rank grid, every run alone on its GPU           -> /tmp/timing
# 2. Issue 7: the rest of the GLUE/MiniLM matrix (scripts/specs_glue_rest.txt), 4 GPUs -> /tmp/runs
# Each call snapshots with scripts/snapshot.sh; the last line of the log is SESSION_DONE.
set -uo pipefail
. scripts/device_env.sh || exit 1
nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.device_count(), "GPUs")'
echo "timing start $(date -u +%FT%TZ)"
RUNS=/tmp/timing bash scripts/pipeline_vs_grid.sh \
  sst2-autolora-s0 sst2-lora_r1-s0,sst2-lora_r2-s0 sst2-lora_r4-s0,sst2-lora_r8-s0 sst2-lora_r16-s0
echo "sweep start $(date -u +%FT%TZ)"
RUNS=/tmp/runs JOBS=${JOBS:-6} bash scripts/sweep_gpus.sh scripts/specs_glue_rest.txt
echo "SESSION_DONE $(date -u +%FT%TZ)"
