#!/usr/bin/env bash
# One detached session on one H200 (device tool), started with setsid so that it outlives the call; every
# GPU job in turn: the captured-step GPU tests, make bench (eager and graphs at the six shapes), the SST-2
# pipeline against the rank grid (each run alone on the GPU), then issue 19's search-budget study (4 runs at
# a time; its wall times are not compared). Log /tmp/session.log (ends with SESSION_DONE); files in /tmp/out.
# Usage (repo root, after carrying .whl .models .data): setsid nohup bash scripts/x1_session.sh >/dev/null 2>&1 &
set -uo pipefail
. scripts/device_env.sh
RESULTS=/tmp/out; mkdir -p "$RESULTS"
{
  echo "start $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider -k "agree or never_synchronises or pipeline_runs" \
    > "$RESULTS/gpu_tests.log" 2>&1; echo "gpu tests rc=$? $(tail -1 "$RESULTS/gpu_tests.log")"
  python3 -m autolora.bench --steps 20 --warmup 3 --modes eager graphs --profile second_order/graphs peft_lora/eager \
    --out "$RESULTS/bench" > "$RESULTS/bench.log" 2>&1; echo "bench rc=$? $(date -u +%T)"
  RUNS=/tmp/timing bash scripts/pipeline_vs_grid.sh \
    sst2-autolora-s0,sst2-lora_r1-s0,sst2-lora_r2-s0,sst2-lora_r4-s0,sst2-lora_r8-s0,sst2-lora_r16-s0
  echo "pipeline done $(date -u +%T)"
  bash scripts/make_study_specs.sh "cola mrpc rte stsb" "0 1 2" > /tmp/specs_study.txt
  RUNS=/tmp/study JOBS=4 PACK= DEADLINE=100000 bash scripts/parallel_runs.sh /tmp/specs_study.txt
  echo "study done $(date -u +%T)"
  echo SESSION_DONE
} >> /tmp/session.log 2>&1
