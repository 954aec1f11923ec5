"""Console script `autolora-run` (Hydra entrypoint): bad input ends with one line and exit status 2.

Before Hydra starts, main() checks every job of the command (each point of a -m sweep: config, ranks file,
model folder) and the folder each will write (runfolder.plan, read only), so a refused command changes nothing.
Hydra itself writes nothing into a run folder (hydra.output_subdir is null; its log file opens on first
use): the run writes .hydra/ once it has claimed the folder. Signals are recorded from the start and acted
on at safe points (checkpoint.StopFlag).
Exit status: 0 done, 2 bad input, 3 diverged (non-finite loss or alpha), 128+N stopped by signal N; a sweep
runs every point, lists the failed ones and exits with their status (1 when they differ).
Under torchrun (data parallel), rank 0 owns the run directory and prints; the other ranks run in a
throwaway Hydra folder and exit with the same status.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import errno
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from autolora import errors
from autolora.cli import sweep
from autolora.cli.overrides import Point, check_overrides, expand_overrides, runs_jobs
from autolora.console import tolerate_any_encoding
from autolora.engine import distributed
from autolora.engine.checkpoint import StopFlag
from autolora.errors import Diverged, Interrupted, UserError
from autolora.files import NO_SPACE, OutputError
from autolora.layout import CHECKPOINT, CONFIG, config_dir
from autolora.runner import run_folder as runfolder
from autolora.runner.pipeline import execute

# Bad input: the config, the data, a ranks file, a checkpoint, a missing file or package (exit status 2).
USER_ERRORS = (UserError, FileNotFoundError)
FILE_SYSTEM = (*NO_SPACE, errno.EACCES, errno.EPERM, errno.EROFS)  # the run cannot write where it was sent
SAFE_PATH = re.compile(r"^[\w./@%+:-]+$")  # a path that needs no quoting as a Hydra override value


WORLD = distributed.from_environment()


def _say(message: str) -> None:
    if WORLD.is_main:
        print(f"autolora-run: {message}", file=sys.stderr)


def _job(cfg: DictConfig, stop: StopFlag, invocation: str, new_folders: set[Path]) -> None:
    """One job (the run, or one point of a sweep): its outcome as an exit status and one line. A refused job
    removes the empty folder Hydra made for it (`new_folders`: those that did not exist before the command)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    files = {CONFIG: OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
             "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task)}
    again = f"hydra.sweep.dir={hydra_cfg.sweep.dir}" if in_sweep else f"hydra.run.dir={run_dir}"
    status, message = 0, "done"
    try:
        if execute(cfg, run_dir, WORLD, sweep=in_sweep, hydra_files=files, stop=stop) is None:
            message = "skipped (finished before)"
    except USER_ERRORS as err:
        status, message = 2, f"error: {err}"
    except Interrupted as interrupted:
        status = 128 + interrupted.signum
        message = f"{interrupted}; nothing was written" if not interrupted.started else (
            f"{interrupted}; " + (f"state saved in {run_dir / CHECKPOINT}; " if interrupted.saved else "")
            + f"continue with the same command plus {again} resume=true")
    except Diverged as err:
        status, message = 3, f"stopped: {err}; the last checkpoint (if any) is {run_dir / CHECKPOINT}"
    except OSError as err:
        if err.errno not in FILE_SYSTEM:
            raise
        where = str(err) if isinstance(err, OutputError) else f"cannot write {err.filename or run_dir}: {err.strerror}"
        status, message = 2, (f"error: {where}; free space (or make the folder writable) and run the command again, "
                              f"with {again} resume=true if the run had started")
    except Exception as err:  # a crash (a bug) in one point of a sweep must not end the other points
        if not in_sweep:
            raise
        traceback.print_exc()
        status, message = 1, f"crashed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    finally:
        distributed.shutdown()
    if status and run_dir in new_folders and WORLD.is_main:
        with contextlib.suppress(OSError):  # not empty: the run had started, keep it
            run_dir.rmdir()
    if status:
        _say(message)
    if in_sweep and WORLD.is_main:
        sweep.record(Path(hydra_cfg.sweep.dir), invocation, hydra_cfg.job.num, list(hydra_cfg.overrides.task),
                     status, message)
    if status and (not in_sweep or status >= 128):  # a signal stops the whole sweep
        sys.exit(status)


def output_dir(point: Point, number: int | None) -> Path | None:
    """The folder Hydra will give this job (hydra.run.dir, or sweep dir / subdir with hydra.job.num = number);
    None when it depends on values only Hydra knows at launch."""
    cfg = copy.deepcopy(point.cfg)
    try:
        if number is not None:
            with open_dict(cfg):
                cfg.hydra.job.num, cfg.hydra.job.id = number, number
        HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices...} in the folder names resolves
        if number is None:
            return Path(str(cfg.hydra.run.dir)).absolute()
        return Path(str(cfg.hydra.sweep.dir)).absolute() / str(cfg.hydra.sweep.subdir)
    except OmegaConfBaseException:
        return None


def resolved(point: Point) -> dict:
    """The job's config without the hydra node, resolved (what a run saves and a resume compares)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(point.cfg, [k for k in point.cfg if k != "hydra"]),
                                  resolve=True)


def pin(key: str, value: Path) -> bool:
    """Hand Hydra the folder checked here (so `${now:...}` is not evaluated a second time); False when the
    path would need quoting as an override (then Hydra computes it again)."""
    if not SAFE_PATH.match(str(value)):
        return False
    sys.argv = [a for a in sys.argv if not a.startswith(f"{key}=")] + [f"{key}={value}"]
    return True


def check_folders(points: list[Point], words: list[str], new_folders: set[Path]) -> Path | None:
    """Before Hydra starts: every job's folder may be written as the command asks (runfolder.plan); resume=true
    without hydra.run.dir picks the newest unfinished run with this config. Adds the folders that do not
    exist yet to `new_folders`; returns a sweep's folder."""
    resume = points[0].cfg.resume is True
    if not points[0].label:  # a single run
        folder = output_dir(points[0], None)
        if folder is None:
            return None
        if resume and not any(w.startswith("hydra.run.dir=") for w in words):
            parent = folder.parent
            folder = runfolder.newest_unfinished(parent, resolved(points[0]))
            if folder is None:
                raise errors.ConfigError(f"resume=true: no unfinished run with this config in {parent}; "
                                  "point at it with hydra.run.dir=<run dir> resume=true")
        runfolder.plan(folder, resolved(points[0]), resume)
        if pin("hydra.run.dir", folder) and not folder.exists():
            new_folders.add(folder)
        return None
    folders = [output_dir(point, number) for number, point in enumerate(points)]
    if None in folders:
        return None
    for point, folder in zip(points, folders, strict=True):
        if folders.count(folder) > 1:
            raise errors.ConfigError(f"{point.label}: its folder {folder} is also another point's (hydra.sweep.subdir)")
        try:
            runfolder.plan(folder, resolved(point), point.cfg.resume is True, sweep=True)
        except errors.ConfigError as err:
            raise errors.ConfigError(f"{point.label}: {err}") from None
    sweep_dir = Path(str(points[0].cfg.hydra.sweep.dir)).absolute()
    if pin("hydra.sweep.dir", sweep_dir):
        new_folders.update(folder for folder in folders if not folder.exists())
    return sweep_dir


@contextlib.contextmanager
def logging_restored():
    """Hydra's job logging (a console handler bound to the sys.stdout of the moment, the run folder's log file)
    for the jobs only: the root logger gets back its handlers and level afterwards, the added handlers closed.
    Left in place, a second main() in the same process (tests, a notebook) would send what it logs before its
    own jobs start (the checks of every job) to a closed stream and into the first run's log file."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def main() -> None:
    """Console script `autolora-run`: Hydra parses overrides, -m sweeps, --cfg job, etc."""
    tolerate_any_encoding()
    sys.argv[1:] = expand_overrides(sys.argv[1:])  # model.path=<folder> alone selects model=local
    args = sys.argv[1:]
    stop = StopFlag()
    invocation = f"{dt.datetime.now():%Y-%m-%d_%H-%M-%S}-{os.getpid()}"
    with stop.installed():
        try:
            points = check_overrides(args)
            in_sweep = bool(points) and bool(points[0].label)
            if WORLD.distributed and in_sweep:
                raise errors.ConfigError("under torchrun a command runs one job; "
                                         "sweep outside it (-m with hydra/launcher=...)")
            sweep_dir, new_folders = None, set()
            if points and runs_jobs(args) and WORLD.is_main:
                sweep_dir = check_folders(points, [a for a in args if not a.startswith("-")], new_folders)
        except UserError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            _say(f"error: {err}")
            sys.exit(2)
        scratch = None
        if not WORLD.is_main:  # rank 0's run directory is the run's; Hydra's own files go to a throwaway folder
            scratch = tempfile.mkdtemp(prefix=f"autolora-rank{WORLD.rank}-")
            sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")] + [
                f"hydra.run.dir={scratch}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]

        def task(cfg: DictConfig) -> None:
            _job(cfg, stop, invocation, new_folders)

        try:
            with logging_restored():
                hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(task)()
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if sweep_dir is not None:
                text, status = sweep.summary(sweep_dir, invocation, [p.label for p in points])
                _say(text)
                from autolora.analysis import compare_seeds  # scipy: only a finished sweep pays its import

                for line in compare_seeds.sweep_lines(sweep_dir):  # the test that the data chose the ranks
                    _say(line)
        if sweep_dir is not None and status:
            sys.exit(status)


if __name__ == "__main__":
    main()
