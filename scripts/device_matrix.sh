#!/usr/bin/env bash
# A protocol matrix (conf/matrix/glue_base.yaml) on a borrowed GPU machine that is reachable only through short,
# back-to-back calls, each carrying under 64 MiB (the device tool; see results/notes/glue_base.md). Here:
#   make bundle BUNDLE=bundle PART_MB=50 MATRIX=glue_base DATA_DIR=<folder with glue/> \
#        MODELS="mpnet=$HOME/.cache/autolora/models/mpnet-base"
# then one call per part folder, carrying bundle/part-NNN (the first also bundle/{install.sh,files.tsv,SHA256SUMS}):
#   bash scripts/device_matrix.sh stash                      # copy the carried parts to /tmp/bundle
#   bash scripts/device_matrix.sh install                    # (optional: `run` installs too) the venv only
# and, on the same warm machine, calls that each continue the matrix for up to SECONDS:
#   bash scripts/device_matrix.sh run SECONDS [reproduce options...]
# `run` installs the bundle once (bundle/install.sh into a venv over the image's torch and transformers), seeds
# the matrix root /tmp/runs/gb from the checkout's results/runs/glue_base (finished runs are skipped), runs
# `autolora.cli.reproduce --continue`, and at SECONDS stops the runs with SIGTERM (each checkpoints; the next call
# resumes it). $OUT/gb.tgz gets the small files of every finished run (the full folders are over what a call may
# return), $OUT/status.txt what finished per stage and the tails of runs that failed.
set -uo pipefail
mode=${1:?usage: device_matrix.sh stash | install | run SECONDS [options]}; shift
mkdir -p /tmp/bundle
BUNDLE_DIR=${BUNDLE_DIR:-bundle}  # the carried parts' folder (another bundle: e.g. one with MiniLM only)
[ -d "$BUNDLE_DIR" ] && cp -r "$BUNDLE_DIR"/. /tmp/bundle/
if [ "$mode" = stash ]; then ls /tmp/bundle; du -sh /tmp/bundle; exit 0; fi
install() {
  [ -f /tmp/venv/.installed ] && return 0
  # a venv over the image's packages: pip may not write into an externally managed system Python
  python3 -m venv --system-site-packages /tmp/venv 2>/dev/null \
    || python3 -m venv --without-pip --system-site-packages /tmp/venv || return 1
  # the image's python3 may itself be a venv, whose packages --system-site-packages does not reach
  venv_site=$(/tmp/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  python3 -c "import sys; print(*[p for p in sys.path if p.endswith('-packages')], sep='\n')" > "$venv_site/image.pth"
  PYTHON=/tmp/venv/bin/python bash /tmp/bundle/install.sh /tmp/joined || return 1
  touch /tmp/venv/.installed
}
# `install` alone: for a call that runs the matrix and other jobs (scripts/device_readouts.sh) side by side
if [ "$mode" = install ]; then install; exit $?; fi
[ "$mode" = run ] || { echo "device_matrix.sh: unknown mode $mode" >&2; exit 2; }
seconds=${1:?run needs SECONDS}; shift
start=$(date +%s)
install || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TQDM_DISABLE=1 PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=1  # 14 runs share 16 cores: one intra-op thread each, no oversubscription
root=/tmp/runs/gb
if [ ! -d $root ]; then
  mkdir -p $root && cp -r results/runs/glue_base/select results/runs/glue_base/final $root/ 2>/dev/null
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
/tmp/venv/bin/python -m autolora.cli.reproduce --matrix glue_base --data-dir /tmp/joined/data --continue $root \
  --no-report --set model=mpnet-base --set model.path=/tmp/joined/models/mpnet "$@" > /tmp/runs/driver.log 2>&1 &
driver=$!
while kill -0 $driver 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$seconds" ]; do sleep 5; done
if kill -0 $driver 2>/dev/null; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  kill -TERM $driver
  pkill -TERM -f "python -m autolora experiment=" # the runs only: each saves a checkpoint on SIGTERM
  for _ in $(seq 20); do pgrep -f "python -m autolora experiment=" >/dev/null || break; sleep 1; done
  pkill -KILL -f "python -m autolora experiment="
fi
wait $driver 2>/dev/null
tail -3 /tmp/runs/driver.log
/tmp/venv/bin/python - "$root" > "$OUT/status.txt" <<'EOF'
import collections, json, sys
from pathlib import Path
root = Path(sys.argv[1])
done = collections.Counter(str(m.parent.parent.parent.relative_to(root)) for m in root.glob("*/*/*/*/metrics.json"))
for stage in sorted(done):
    print(stage, done[stage])
for log in sorted(root.glob("*/*/*/*.log")):
    run = log.with_suffix("")
    if not (run / "metrics.json").is_file():
        print(f"-- unfinished {run.relative_to(root)}:", *log.read_text(errors="replace").splitlines()[-2:], sep="\n   ")
EOF
cat "$OUT/status.txt" | head -40
# finished runs only (reproduce.collect: the small files of each folder with a metrics.json): a cut-off run's
# config.yaml seeded into the next machine's root would make that run refuse its folder as not its own
rm -rf /tmp/collected && mkdir -p /tmp/collected && cp $root/runs.jsonl /tmp/collected/ 2>/dev/null
/tmp/venv/bin/python -c "import sys; from pathlib import Path; from autolora.cli.reproduce import collect
print(collect(Path(sys.argv[1]), Path(sys.argv[2])), 'finished runs')" $root /tmp/collected
tar czf "$OUT/gb.tgz" -C /tmp/collected .
ls -la "$OUT"; echo "call took $(( $(date +%s) - start )) s"
