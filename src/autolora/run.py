"""Console script `autolora-run` (Hydra entrypoint): bad input ends with one line and exit status 2.

Overrides are checked before Hydra starts (unknown options and keys), then `pipeline.run` does the work.
Exit status: 0 done, 2 bad input, 3 diverged (non-finite loss or alpha), 128+N stopped by signal N.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from autolora import ranks as ranks_io
from autolora.checkpoint import Diverged, Interrupted
from autolora.inject import RankKeyError
from autolora.pipeline import run
from autolora.settings import ConfigError, check_overrides, config_dir
from autolora.tasks.base import DataError

USER_ERRORS = (ConfigError, DataError, RankKeyError, ranks_io.RanksFileError, FileNotFoundError)


def _job(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except USER_ERRORS as err:
        print(f"autolora-run: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:
        print(f"autolora-run: {stop}; state saved in {run_dir / 'checkpoint.pt'}; continue with the same command "
              f"plus hydra.run.dir={run_dir} resume=true", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except Diverged as err:
        print(f"autolora-run: stopped: {err}; the last checkpoint (if any) is {run_dir / 'checkpoint.pt'}",
              file=sys.stderr)
        sys.exit(3)


def main() -> None:
    """Console script `autolora-run`: Hydra parses overrides, -m sweeps, --cfg job, etc."""
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"autolora-run: error: {err}", file=sys.stderr)
        sys.exit(2)
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(_job)()


if __name__ == "__main__":
    main()
