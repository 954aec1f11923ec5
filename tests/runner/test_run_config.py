"""Every config in conf/ composes (Hydra compose API) and validates; the interface keys exist."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from autolora.errors import ConfigError
from autolora.layout import config_dir
from autolora.runner.run_config import build_settings, check_compatible
from autolora.tasks import build_task

CONF = config_dir()
GROUPS = ["model", "task", "search", "retrain", "logger", "debug", "experiment"]


def options(group: str) -> list[str]:
    """Every selectable option of a group on disk (files starting with _ are shared fragments)."""
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    """Each option file composes with the rest and passes the dataclass checks and the model/task rule."""
    partner = {"model": "task=e2e", "task": "model=tiny-gpt2"} if option in ("e2e", "tiny-gpt2") else {}
    needs = {"local": ["model.path=/models/my-bert"], "text_classification": ["task.train_file=x.csv"],
             "token_classification": ["task.train_file=x.conll"], "generation": ["task.train_file=x.jsonl"]}
    cfg = compose(f"{group}={option}", *([partner[group]] if group in partner else []), *needs.get(option, []))
    settings = build_settings(cfg)
    task = build_task(OmegaConf.to_container(cfg.task, resolve=True))
    check_compatible(settings.model, task)


def test_groups_are_not_empty():
    """The config groups of conf/: models, the eight GLUE tasks, search variants, experiments."""
    assert {"minilm", "roberta-base", "roberta-large", "gpt2", "gpt2-medium",
            "tiny-roberta", "tiny-gpt2"} <= set(options("model"))
    assert {f"glue/{t}" for t in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")} <= set(options("task"))
    assert {"default", "first_order"} <= set(options("search"))
    assert len(options("experiment")) >= 8


def test_defaults_are_the_offline_embedded_run():
    """No arguments: MiniLM on the packaged SST-2 sample, AutoLoRA, k=8, threshold 1/k, W&B offline."""
    cfg = compose()
    settings = build_settings(cfg)
    assert (settings.model.name, cfg.task.name, settings.method) == ("minilm", "glue/sst2", "autolora")
    assert settings.search.k == 8 and settings.search.selection_threshold == 1 / 8
    assert settings.search.eta == settings.search.lr  # DARTS: the look-ahead uses W's learning rate
    assert settings.logger.name == "wandb" and settings.logger.mode == "auto"


@pytest.mark.parametrize("override, path, value", [
    ("search.k=4", "search.k", 4), ("search.eta=0", "search.eta", 0), ("search.epochs=2", "search.epochs", 2),
    ("retrain.epochs=3", "retrain.epochs", 3), ("data.data_dir=/x", "data.data_dir", "/x"),
    ("data.max_train_samples=10", "data.max_train_samples", 10),
    ("data.max_eval_samples=7", "data.max_eval_samples", 7),
    ("seed=3", "seed", 3), ("method=lora", "method", "lora"), ("lora.r=4", "lora.r", 4),
    ("device=cpu", "device", "cpu"),
    ("logger=none", "logger.name", "none"), ("model=tiny-gpt2", "model.name", "tiny-gpt2"),
])
def test_interface_keys(override, path, value):
    """The keys users type (issue 4's list) exist and land where the code reads them."""
    assert OmegaConf.select(compose(override), path) == value


def test_mistyped_key_is_an_error():
    """Struct mode: an unknown key is rejected, not silently added."""
    with pytest.raises(ConfigCompositionException):
        compose("search.kk=4")


@pytest.mark.parametrize("override, message", [
    ("search.k=0", "search.k must be >= 1"), ("search.threshold=1.5", "search.threshold"),
    ("search.val_fraction=1", "search.val_fraction"), ("method=grid", "method must be one of"),
    ("lora.r=0", "lora.r must be >= 1"), ("data.source=ftp", "data.source"), ("device=tpu", "device must be"),
    ("logger.mode=loud", "logger.mode"),
])
def test_bad_values_raise_config_errors(override, message):
    """Out-of-range values become a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=message):
        build_settings(compose(override))


def test_generation_task_brings_the_offline_decoder():
    """task=e2e selects SmolLM2 (offline); a model on the command line still wins."""
    assert compose("task=e2e").model.name == "smollm2-135m"
    assert compose("task=e2e", "model=gpt2").model.name == "gpt2"


def test_model_task_rule():
    """Generation tasks need a decoder; classification needs a trainable head."""
    settings = build_settings(compose("model=minilm"))
    with pytest.raises(ConfigError, match="needs a decoder"):
        check_compatible(settings.model, SimpleNamespace(name="e2e", head="causal_lm"))
    decoder = build_settings(compose("model=tiny-gpt2")).model
    check_compatible(decoder, SimpleNamespace(name="e2e", head="causal_lm"))


def test_experiment_pins_the_paper_recipe():
    """experiment=paper_roberta_base_cola: RoBERTa-base, CoLA, released-code epochs, seeds 0-4 for -m."""
    cfg = compose("experiment=paper_roberta_base_cola")
    assert (cfg.model.name, cfg.task.name, cfg.search.epochs, cfg.retrain.epochs) == (
        "roberta-base", "glue/cola", 20, 30)
    assert cfg.hydra.sweeper.params.seed == "0,1,2,3,4"


def test_a_sweep_folder_name_too_long_for_the_file_system_is_cut_with_a_digest(tmp_path):
    """Many overrides made a name over the 255-byte limit (OSError: File name too long, as a traceback); two such
    points that differ only at the end still get two folders, each creatable."""
    from autolora.runner.run_config import FOLDER_NAME_MAX, one_folder

    assert one_folder("task=glue/rte,seed=0") == "task=glue-rte,seed=0"
    long = ",".join(f"task.key_{i}=value_{i}" for i in range(30))
    a, b = one_folder(long + ",seed=0"), one_folder(long + ",seed=1")
    assert a != b and len(a.encode()) <= FOLDER_NAME_MAX and a.startswith("task.key_0=value_0,")
    for name in (a, b):
        (tmp_path / f"12_{name}").mkdir()
    assert len(one_folder("é" * 300).encode()) <= FOLDER_NAME_MAX  # cut on a character, not inside one
