"""Where things are: the run folder's file names, the config keys that change no result, the package's conf/.

The runner writes a run folder and analysis/ reads it back; both take the names from here, so a renamed file
cannot leave the reader looking for the old one. The README's "run directory" table explains each file.
"""

from __future__ import annotations

from pathlib import Path

# The run folder (runner/run_folder.py decides who may write it).
MARKER = ".autolora-run"  # makes a folder a run of autolora-run: start time, sha256 of every data file read
LOCK = ".autolora-lock"  # held (flock) by the process running the folder
CONFIG = "config.yaml"  # the fully resolved config
METRICS = "metrics.json"  # the run's record (record.py); its presence means the run finished
RANKS = "ranks.json"  # matrix name -> rank, the gates and provenance; written by the search only
ALPHA = "alpha.json"  # matrix name -> the gates at the end of the search
EVENTS = "events.jsonl"  # one line every log_every steps
CHECKPOINT = "checkpoint.pt"  # the loop state of the phase in progress
LABELS = "labels.json"  # class id -> label, as the model's head numbers them
PREDICTIONS = "predictions.jsonl"  # generation and NER predictions on the headline split (predictions.py)
LEGACY_PREDICTIONS = "predictions.txt"  # the same, written before predictions.jsonl (text could break it)
RANKS_FIGURE = "ranks.png"
ADAPTER = "adapter"  # the retrained adapter in peft format
BASE_MODEL = "base_model"  # random-init backbones only: the weights the adapter belongs to
RESCORED = "metrics_rescored.json"  # analysis/rescore.py's output beside metrics.json
# what results/runs/ keeps of a run
SMALL_FILES = (METRICS, RESCORED, RANKS, CONFIG, LABELS, PREDICTIONS, LEGACY_PREDICTIONS)

# Config keys that change what a run shows (or where it caches compiled kernels), not what it computes: a resume
# may change them.
DISPLAY_KEYS = ("resume", "progress", "verbose", "compile_cache")
# Keys that say how a run was driven, not what it computed: runs that differ only in these (and the seed,
# and the paths below) are replicates of one configuration in the report. cuda:0 or cuda:1 is the same
# computation; `precision` is not listed, it changes the numbers.
DRIVING_KEYS = (*DISPLAY_KEYS, "log_every", "checkpoint_every", "logger", "device")
# Paths: the same files sit in different folders on different machines (the data a run read is compared by
# its fingerprint and row counts instead); a ranks file is usually one per seed.
PATH_KEYS = ("data.data_dir", "search.ranks_file")
REPLICATE_KEY = "seed"  # the replicate axis: mean ± std is over the seeds of a group
RUN_ONLY = (REPLICATE_KEY, *DRIVING_KEYS, *PATH_KEYS)


def config_dir() -> Path:
    """conf/ inside the installed package (wheel), else the repository's conf/ (editable checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/config.yaml next to {here} or in the repository root")
