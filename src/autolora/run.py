"""Console script `autolora-run` (Hydra entrypoint): bad input ends with one line and exit status 2.

Overrides are checked before Hydra starts (unknown options and keys), then `pipeline.run` does the work.
Exit status: 0 done, 2 bad input, 3 diverged (non-finite loss or alpha), 128+N stopped by signal N.
Under torchrun (data parallel), rank 0 owns the run directory and prints; the other ranks run in a
throwaway Hydra folder and exit with the same status.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from autolora import distributed
from autolora import ranks as ranks_io
from autolora.checkpoint import Diverged, Interrupted
from autolora.inject import RankKeyError, TargetError
from autolora.pipeline import run
from autolora.settings import ConfigError, check_overrides, config_dir, expand_overrides
from autolora.tasks.base import DataError

USER_ERRORS = (ConfigError, DataError, RankKeyError, TargetError, ranks_io.RanksFileError, FileNotFoundError)


WORLD = distributed.from_environment()


def _say(message: str) -> None:
    if WORLD.is_main:
        print(f"autolora-run: {message}", file=sys.stderr)


def _job(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir, WORLD)
    except USER_ERRORS as err:
        _say(f"error: {err}")
        sys.exit(2)
    except Interrupted as stop:
        _say(f"{stop}; state saved in {run_dir / 'checkpoint.pt'}; continue with the same command "
             f"plus hydra.run.dir={run_dir} resume=true")
        sys.exit(128 + stop.signum)
    except Diverged as err:
        _say(f"stopped: {err}; the last checkpoint (if any) is {run_dir / 'checkpoint.pt'}")
        sys.exit(3)
    finally:
        distributed.shutdown()


def main() -> None:
    """Console script `autolora-run`: Hydra parses overrides, -m sweeps, --cfg job, etc."""
    sys.argv[1:] = expand_overrides(sys.argv[1:])  # model.path=<folder> alone selects model=local
    try:
        check_overrides(sys.argv[1:])
        if WORLD.distributed and {"-m", "--multirun"} & set(sys.argv[1:]):
            raise ConfigError("under torchrun a command runs one job; sweep outside it (-m with hydra/launcher=...)")
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _say(f"error: {err}")
        sys.exit(2)
    scratch = None
    if not WORLD.is_main:  # rank 0's run directory is the run's; Hydra's own files go to a throwaway folder
        scratch = tempfile.mkdtemp(prefix=f"autolora-rank{WORLD.rank}-")
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")] + [
            f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled"]
    try:
        hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(_job)()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
