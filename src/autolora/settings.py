"""The run config as frozen dataclasses, checked before any heavy work; override checks for the CLI.

Only this module and the pipeline see a DictConfig. Every problem becomes a ConfigError naming its key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from autolora.adalora import AdaLoraSettings
from autolora.graphs import COMPILE_MODES
from autolora.inject import TargetConfig
from autolora.models import ModelConfig
from autolora.search import SearchConfig
from autolora.tasks.base import DataConfig
from autolora.tracking import LoggerConfig
from autolora.train import RetrainConfig

METHODS = ("autolora", "lora", "adalora")


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key."""


def config_dir() -> Path:
    """conf/ inside the installed package (wheel), else the repository's conf/ (editable checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/config.yaml next to {here} or in the repository root")


@dataclass(frozen=True)
class Settings:
    """Everything a run needs, checked before any heavy work."""

    method: str
    seed: int
    resume: bool
    checkpoint_every: int
    device: torch.device
    precision: str  # fp32 | bf16 (resolved from auto)
    compile: str  # auto | off | graphs | inductor (graphs.py; resolved per phase by graphs.resolve_compile)
    pad_to_multiple: int  # batches are padded to a multiple of this length (batch.pad_to_bucket)
    log_every: int
    progress: bool
    verbose: bool  # show library load reports, progress bars of library internals and known warnings
    lora_r: int
    model: ModelConfig
    data: DataConfig
    search: SearchConfig
    retrain: RetrainConfig
    adalora: AdaLoraSettings
    logger: LoggerConfig


def _node(cfg: DictConfig, key: str) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:  # a ??? in conf/, e.g. task.train_file of your own data
        name = err.full_key if err.full_key.startswith(f"{key}.") else f"{key}.{err.full_key}"
        raise ConfigError(f"{name} is required: add {name}=... to the command") from None


def build_settings(cfg: DictConfig) -> Settings:
    """DictConfig -> frozen dataclasses; any invalid value becomes a ConfigError naming its key."""
    try:
        for key in ("seed", "log_every", "checkpoint_every", "pad_to_multiple"):
            if not isinstance(cfg[key], int) or isinstance(cfg[key], bool):
                raise ConfigError(f"{key} must be an integer, got {cfg[key]!r}")
        if cfg.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {cfg.method!r}")
        if cfg.lora.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {cfg.lora.r}")
        if cfg.log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {cfg.log_every}")
        if cfg.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {cfg.checkpoint_every}")
        if cfg.pad_to_multiple < 1:
            raise ConfigError(f"pad_to_multiple must be >= 1, got {cfg.pad_to_multiple}")
        model = _node(cfg, "model")
        targets = model.pop("targets")
        modules = targets["modules"] if targets["modules"] is None else tuple(targets["modules"])
        model = ModelConfig(
            **{**model, "head_modules": tuple(model["head_modules"])},
            targets=TargetConfig(modules, tuple(targets["split"]), tuple(targets["parts"])),
        )
        device = resolve_device(cfg.device)
        check_compile(cfg.compile, device)
        return Settings(
            method=cfg.method, seed=cfg.seed, resume=bool(cfg.resume), checkpoint_every=cfg.checkpoint_every,
            device=device, precision=resolve_precision(cfg.precision, device), compile=cfg.compile,
            pad_to_multiple=cfg.pad_to_multiple,
            log_every=cfg.log_every, progress=cfg.progress, verbose=bool(cfg.verbose), lora_r=cfg.lora.r, model=model,
            data=DataConfig(**_node(cfg, "data")), search=SearchConfig(**_node(cfg, "search")),
            retrain=RetrainConfig(**_node(cfg, "retrain")), adalora=AdaLoraSettings(**_node(cfg, "adalora")),
            logger=LoggerConfig(**_node(cfg, "logger")),
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when visible, else cpu; asking for an absent CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def check_compile(mode: str, device: torch.device) -> None:
    """compile must name a mode; graphs and inductor need a CUDA device (the rest is checked per phase)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode in ("graphs", "inductor") and device.type != "cuda":
        raise ConfigError(f"compile={mode} captures CUDA graphs: it needs device=cuda (or compile=auto / off)")


def resolve_precision(name: str, device: torch.device) -> str:
    """auto -> bf16 autocast on CUDA, fp32 on CPU."""
    if name not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be auto, fp32 or bf16, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def check_compatible(model: ModelConfig, task) -> None:
    """The model/task rule: generation tasks need a decoder; a random-init classifier needs its head named
    (a pretrained one trains the modules its checkpoint lacks, the new head, in any case)."""
    if task.head == "causal_lm" and model.kind != "decoder":
        raise ConfigError(f"task {task.name} generates text: it needs a decoder model, not {model.name}")
    if task.head != "causal_lm" and model.is_random and not model.head_modules:
        raise ConfigError(f"model.head_modules is empty: task {task.name} needs its classifier head trained")


def folder_name(path: str) -> str:
    """${autolora.folder:PATH}: a model named after its folder (model=local), e.g. /models/my-bert/ -> my-bert."""
    return Path(str(path).rstrip("/")).name or str(path)


def method_label(method: str, lora_r: int, target_r: int, search: str | None) -> str:
    """${autolora.method:...}: run folders named by method: autolora (or autolora_<search option>), lora_r8, adalora_r4."""
    if method == "lora":
        return f"lora_r{lora_r}"
    if method == "adalora":
        return f"adalora_r{target_r}"
    return method if search in (None, "default") else f"{method}_{search}"


def one_folder(name: str) -> str:
    """${autolora.one_folder:...}: a sweep job's overrides as one folder name (task=glue/rte -> task=glue-rte)."""
    return str(name).replace("/", "-")


def register_resolvers() -> None:
    """The config's own interpolations. Registered when this module is imported, since Hydra's launchers
    resolve the config again in their job processes (which import autolora.run, hence this module)."""
    OmegaConf.register_new_resolver("autolora.folder", folder_name, replace=True)
    OmegaConf.register_new_resolver("autolora.method", method_label, replace=True)
    OmegaConf.register_new_resolver("autolora.one_folder", one_folder, replace=True)


register_resolvers()


def expand_overrides(args: list[str]) -> list[str]:
    """model.path=<folder> without model=<option> means model=local: everything else from the folder."""
    keys = {arg.split("=", 1)[0].lstrip("+~") for arg in args if "=" in arg and not arg.startswith("-")}
    if "model.path" in keys and "model" not in keys:
        return [*args, "model=local"]  # last: a flag such as -m may come first, positional overrides after it
    return list(args)


GROUPS = ("model", "task", "search", "retrain", "logger", "debug", "experiment")
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun")


def group_options(group: str, extra_dirs: Sequence[Path] = ()) -> list[str]:
    """The selectable options of a config group (files starting with _ are shared fragments), in conf/ and in
    the folders of hydra.searchpath (your own task files)."""
    found = set()
    for folder in (config_dir(), *extra_dirs):
        root = folder / group
        found |= {str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_")}
    return sorted(found)


def search_path(overrides) -> list[Path]:
    """The file:// folders of a hydra.searchpath=[...] override (pkg:// entries name Python packages: skipped)."""
    folders = []
    for override in overrides:
        if override.get_key_element() == "hydra.searchpath" and not override.is_delete():
            entries = override.value()
            for entry in entries if isinstance(entries, list) else [entries]:
                if str(entry).startswith("file://"):
                    folders.append(Path(str(entry)[len("file://"):]))
    return folders


def check_overrides(args: list[str]) -> None:
    """Unknown group options and keys, bad override syntax: one ConfigError line before Hydra starts."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.startswith(("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")) for a in args):
        return  # a different config tree: Hydra checks it
    words, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in FLAGS_WITH_VALUE
            continue
        words.append(arg)
    try:
        overrides = OverridesParser.create().parse_overrides(words)
    except HydraException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    plain = []
    extra = search_path(overrides)
    for override in overrides:
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        group = override.key_or_group
        if group in GROUPS and not override.is_delete():
            known = group_options(group, extra)
            for value in values:
                if value is not None and str(value) not in known:
                    raise ConfigError(f"unknown {group} {str(value)!r}; choose one of: {', '.join(known)}")
        plain.append(f"{override.get_key_element()}={values[0]}" if override.is_sweep_override() else override.input_line)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="check"):
            compose("config", overrides=plain, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        message = " ".join(str(err).split())
        unknown = re.match(r"Could not override '([^']+)'", message)
        if unknown:  # Hydra suggests '+key=...', which struct mode would then reject
            message = f"unknown config key '{unknown.group(1)}' (`autolora-run --cfg job` lists the keys)"
        raise ConfigError(message) from None


