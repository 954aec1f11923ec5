"""The run config as frozen dataclasses, checked before any heavy work; override checks for the CLI (every job
of a command, each point of a -m sweep, before Hydra starts).

Only this module and the pipeline see a DictConfig. Every problem becomes a ConfigError naming its key.
"""

from __future__ import annotations

import dataclasses
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
        device = resolve_device(cfg.device) if here else placeholder_device(cfg.device)
        check_compile(cfg.compile, device if here else None)
        return Settings(
            method=cfg.method, seed=cfg.seed, resume=cfg.resume, checkpoint_every=cfg.checkpoint_every,
            device=device, precision=resolve_precision(cfg.precision, device), compile=cfg.compile,
            pad_to_multiple=cfg.pad_to_multiple,
            log_every=cfg.log_every, progress=cfg.progress, verbose=bool(cfg.verbose), lora_r=cfg.lora.r, model=model,
            data=DataConfig(**_node(cfg, "data")), search=SearchConfig(**_node(cfg, "search")),
            retrain=RetrainConfig(**_node(cfg, "retrain")), adalora=AdaLoraSettings(**_node(cfg, "adalora")),
            logger=LoggerConfig(**_node(cfg, "logger")),
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def check_config(cfg: DictConfig, here: bool = True):
    """Every check that needs only the config and the files it names, before any data or model is loaded:
    the settings, the task, the model/task rule, search.ranks_file, a local model.path. Returns
    (settings, task). here=False: checked before launch, maybe on another host than the job's (no device check)."""
    from autolora import ranks as ranks_io
    from autolora.models import check_location, resolve_auto
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
    if settings.method == "autolora" and settings.search.ranks_file is not None:
        ranks_io.load(settings.search.ranks_file, max_rank=settings.search.k)
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


@dataclass(frozen=True)
class Point:
    """One job of a command: its overrides (a sweep's values expanded), its composed config (hydra node
    included) and how messages name it ('' for a single run)."""

    overrides: tuple[str, ...]
    cfg: DictConfig
    label: str


NOT_JOBS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")


def runs_jobs(args: list[str]) -> bool:
    """Whether the command runs jobs (not --cfg, --help, --info, ...)."""
    return not any(arg in NOT_JOBS for arg in args)


def check_overrides(args: list[str]) -> list[Point]:
    """Unknown group options and keys, bad override syntax, then every check of `check_config` for every job of
    the command (each point of a -m sweep, hydra.sweeper.params included): one ConfigError line naming the
    point, before Hydra starts. Returns the jobs ([] for another config tree, which Hydra checks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.startswith(("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")) for a in args):
        return []
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

    def composed(job: list[str], label: str) -> DictConfig:
        try:
            return compose("config", overrides=job, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            message = " ".join(str(err).split())
            unknown = re.match(r"Could not override '([^']+)'", message)
            if unknown:  # Hydra suggests '+key=...', which struct mode would then reject
                message = f"unknown config key '{unknown.group(1)}' (`autolora-run --cfg job` lists the keys)"
            raise ConfigError(f"{label}: {message}" if label else message) from None

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="check"):
        first = composed(plain, "")
        multirun = "-m" in args or "--multirun" in args or str(first.hydra.mode) == "RunMode.MULTIRUN"
        if not multirun:
            jobs, swept = [words], set()
        else:
            jobs, swept = sweep_points(first, words, OverridesParser.create(GlobalHydra.instance().config_loader()))
        points = []
        for number, job in enumerate(jobs):
            label = ""
            if multirun:
                shown = " ".join(o for o in job if o.split("=", 1)[0] in swept)
                label = f"sweep point {number} of {len(jobs)}" + (f" ({shown})" if shown else "")
            cfg = first if not multirun else composed(job, label)
            if runs_jobs(args):
                try:
                    check_config(cfg, here=False)  # the device is checked by the job, where it runs
                except (ValueError, FileNotFoundError) as err:  # ConfigError, RanksFileError, a missing package
                    raise ConfigError(f"{label}: {err}" if label else str(err)) from None
            points.append(Point(tuple(job), cfg, label))
    return points


def sweep_points(first: DictConfig, words: list[str], parser) -> tuple[list[list[str]], set[str]]:
    """The jobs of a -m sweep as Hydra's basic sweeper makes them (hydra.sweeper.params, then the command's
    overrides; the cartesian product of the swept values), and the keys that vary."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException

    params = OmegaConf.select(first, "hydra.sweeper.params") or {}
    try:
        overrides = parser.parse_overrides([f"{key}={value}" for key, value in params.items()] + words)
        jobs = BasicSweeper.split_arguments(overrides, None)[0]
    except HydraException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
    return jobs, swept
