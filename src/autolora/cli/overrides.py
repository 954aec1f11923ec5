"""The command line's overrides, checked before Hydra starts: every job of a command (each point of a -m sweep)
is composed and checked by run_config.check_config, so a refused command changes nothing on disk."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autolora.errors import ConfigError
from autolora.layout import config_dir
from autolora.runner.preflight import read_ranks_file
from autolora.runner.run_config import check_config


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


def syntax_error(words: list[str], message: str) -> str:
    """Hydra's parse error as a line a user can act on: its lexer names only its exception class
    (LexerNoViableAltException) for a character its grammar has no rule for, as any non-ASCII letter is
    outside quotes; such an override is named with how to quote it."""
    for word in words:
        key, equals, value = word.partition("=")
        if equals and not value.isascii() and not value.startswith(("'", '"')):
            return (f"{word}: an unquoted value must be ASCII in Hydra's override grammar; quote it, in the "
                    f"shell too: '{key}=\"{value}\"'")
    return message


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
        raise ConfigError(syntax_error(words, str(err).splitlines()[0])) from None
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
        plain.append(f"{override.get_key_element()}={values[0]}" if override.is_sweep_override()
                     else override.input_line)

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
                    read_ranks_file(check_config(cfg, here=False)[0])  # the device is checked by the job, where it runs
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
