"""The run config as frozen dataclasses, checked before any heavy work (Settings, check_config).

Only this module, cli/ and the pipeline see a DictConfig; below them every setting is a frozen dataclass
defined next to the code using it. Every problem becomes a ConfigError naming its key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from autolora.engine.capture import COMPILE_MODES
from autolora.errors import ConfigError
from autolora.method.adalora import AdaLoraSettings
from autolora.method.eva import EvaSettings
from autolora.method.registry import METHODS
from autolora.method.search import SearchConfig
from autolora.method.train import RetrainConfig
from autolora.models.backbone import ModelConfig
from autolora.models.targets import TargetConfig
from autolora.runner.tracking import LoggerConfig
from autolora.tasks.base import DataConfig


@dataclass(frozen=True)
class Settings:
    """Everything a run needs, checked before any heavy work."""

    method: str
    seed: int
    resume: bool
    checkpoint_every: int
    device: torch.device
    precision: str  # fp32 | bf16 (resolved from auto)
    compile: str  # auto | off | graphs | inductor (engine/capture.py; decided per phase by runner.job.compile_choices)
    compile_cache: str | None  # inductor's and triton's cache folder (engine/compile_cache.py); None: the default
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
    eva: EvaSettings
    logger: LoggerConfig


def _node(cfg: DictConfig, key: str) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:  # a ??? in conf/, e.g. task.train_file of your own data
        name = err.full_key if err.full_key.startswith(f"{key}.") else f"{key}.{err.full_key}"
        raise ConfigError(f"{name} is required: add {name}=... to the command") from None


def build_settings(cfg: DictConfig, here: bool = True) -> Settings:
    """DictConfig -> frozen dataclasses; any invalid value becomes a ConfigError naming its key. here=False:
    the job runs elsewhere (a SLURM node), so `device` is checked for its form only, not against this host."""
    try:
        for key in ("seed", "log_every", "checkpoint_every", "pad_to_multiple"):
            if not isinstance(cfg[key], int) or isinstance(cfg[key], bool):
                raise ConfigError(f"{key} must be an integer, got {cfg[key]!r}")
        for key in ("resume", "progress"):  # `resume=no` is the string 'no', which bool() would read as true
            if not isinstance(cfg[key], bool):
                raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
        if not 0 <= cfg.seed < 2**32:  # NumPy's seed range
            raise ConfigError(f"seed must lie in [0, 2^32), got {cfg.seed}")
        if cfg.method not in METHODS:
            raise ConfigError(f"method must be one of {tuple(METHODS)}, got {cfg.method!r}")
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
            targets=TargetConfig(modules, tuple(targets["split"]), tuple(targets["parts"]), targets["groups"]),
        )
        device = resolve_device(cfg.device) if here else placeholder_device(cfg.device)
        check_compile(cfg.compile, device if here else None)
        return Settings(
            method=cfg.method, seed=cfg.seed, resume=cfg.resume, checkpoint_every=cfg.checkpoint_every,
            device=device, precision=resolve_precision(cfg.precision, device), compile=cfg.compile,
            compile_cache=None if cfg.compile_cache is None else str(cfg.compile_cache),
            pad_to_multiple=cfg.pad_to_multiple,
            log_every=cfg.log_every, progress=cfg.progress, verbose=bool(cfg.verbose), lora_r=cfg.lora.r, model=model,
            data=DataConfig(**_node(cfg, "data")), search=SearchConfig(**_node(cfg, "search")),
            retrain=RetrainConfig(**_node(cfg, "retrain")), adalora=AdaLoraSettings(**_node(cfg, "adalora")),
            eva=EvaSettings(**_node(cfg, "eva")),
            logger=LoggerConfig(**_node(cfg, "logger")),
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def check_config(cfg: DictConfig, here: bool = True):
    """Every check that needs only the config and the files it names, before any data or model is loaded:
    the settings, the task, the model/task rule, a local model.path. Returns (settings, task). here=False:
    checked before launch, maybe on another host than the job's (no device check). search.ranks_file is read
    by the preflight (runner.preflight.read_ranks_file), once per run."""
    from autolora.models.backbone import check_location, resolve_auto
    from autolora.tasks import build_task

    settings = build_settings(cfg, here)
    try:
        task = build_task(_node(cfg, "task"))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"task {cfg.task.get('name', '?')}: {err}") from None
    try:
        check_location(settings.model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    settings = dataclasses.replace(settings, model=resolve_auto(settings.model, task.head))  # no weights read
    check_compatible(settings.model, task)
    return settings, task


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when visible, else cpu; asking for an absent CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def check_compile(mode: str, device: torch.device | None) -> None:
    """compile must name a mode; graphs and inductor need a CUDA device (the rest is checked per phase; device
    None: checked away from the job's host, so the mode's name only)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode in ("graphs", "inductor") and device is not None and device.type != "cuda":
        raise ConfigError(f"compile={mode} captures CUDA graphs: it needs device=cuda (or compile=auto / off)")


def placeholder_device(name: str) -> torch.device:
    """The CPU, after checking the form of `name` only (for checks made away from the job's host)."""
    if name not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", str(name)):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device("cpu")


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


def method_label(method: str, lora_r: int, target_r: int, search: str | None, eva_r: int | None = None,
                 eva_rho: float | None = None) -> str:
    """${autolora.method:...}: run folders named by method: autolora (or autolora_<search option>), lora_r8,
    adalora_r4, eva_r4_rho2. eva_r, eva_rho: optional, as configs saved before method=eva pass four values."""
    if method == "lora":
        return f"lora_r{lora_r}"
    if method == "adalora":
        return f"adalora_r{target_r}"
    if method == "eva":
        return f"eva_r{eva_r}_rho{float(eva_rho):g}"
    return method if search in (None, "default") else f"{method}_{search}"


FOLDER_NAME_MAX = 200  # bytes: most file systems cap a name at 255, and Hydra puts "<num>_" before it


def one_folder(name: str) -> str:
    """${autolora.one_folder:...}: a sweep job's overrides as one folder name (task=glue/rte -> task=glue-rte).
    A name too long for the file system keeps its start and ends in a digest of the whole, so that two sweep
    points still get two folders (their overrides, in full, are in each run's overrides.yaml)."""
    name = str(name).replace("/", "-")
    if len(name.encode()) <= FOLDER_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    head = name.encode()[:FOLDER_NAME_MAX - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def register_resolvers() -> None:
    """The config's own interpolations. Registered when this module is imported, since Hydra's launchers
    resolve the config again in their job processes (which import autolora.cli.main, hence this module)."""
    OmegaConf.register_new_resolver("autolora.folder", folder_name, replace=True)
    OmegaConf.register_new_resolver("autolora.method", method_label, replace=True)
    OmegaConf.register_new_resolver("autolora.one_folder", one_folder, replace=True)


register_resolvers()
