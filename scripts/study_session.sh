#!/usr/bin/env bash
# Issue 19's search-budget study on one H200 (device tool), detached so that it outlives the call that starts it:
#   start: setsid nohup bash scripts/study_session.sh >/dev/null 2>&1 &
# Runs scripts/make_study_specs.sh's lines $JOBS at a time (parallel_runs.sh: skips finished runs, resumes
# unfinished ones). Wall times of parallel runs share the GPU and are not compared. Log /tmp/study.log, ending
# with STUDY_DONE. Collect with scripts/study_pack.sh.
set -uo pipefail
. scripts/device_env.sh || exit 1
bash scripts/make_study_specs.sh "cola stsb mrpc rte" "0 1 2" > /tmp/specs_study.txt
{
  echo "start $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) jobs ${JOBS:-12}"
  RUNS=/tmp/study JOBS=${JOBS:-12} PACK= DEADLINE=100000 bash scripts/parallel_runs.sh /tmp/specs_study.txt
  echo "STUDY_DONE $(date -u +%T)"
} >> /tmp/study.log 2>&1
