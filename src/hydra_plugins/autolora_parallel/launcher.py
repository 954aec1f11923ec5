"""The Hydra side of hydra/launcher=parallel: its config node and the Launcher that hands the sweep's points,
pickled, to autolora.cli.parallel (which decides how many run at once). Hydra imports every module under
hydra_plugins when it starts, so nothing of autolora or torch is imported until a sweep is launched."""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module without registering it in
# sys.modules, where dataclasses would look up string annotations.
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class ParallelLauncherConf:
    """hydra.launcher.*: see conf/hydra/launcher/parallel.yaml."""

    _target_: str = "hydra_plugins.autolora_parallel.launcher.ParallelLauncher"
    jobs: int = 4
    job_memory_gb: Any = None  # float or null (measured on the first point)
    reserve_gb: float = 2.0
    poll_s: float = 2.0


ConfigStore.instance().store(group="hydra/launcher", name="autolora_parallel", node=ParallelLauncherConf,
                             provider="autolora")


class ParallelLauncher(Launcher):
    def __init__(self, jobs: int, job_memory_gb: Optional[float], reserve_gb: float, poll_s: float) -> None:  # noqa: UP045
        self.settings = {"jobs": int(jobs), "job_memory_gb": None if job_memory_gb is None else float(job_memory_gb),
                         "reserve_gb": float(reserve_gb), "poll_s": float(poll_s)}
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045
        self.task_function: Optional[TaskFunction] = None  # noqa: UP045

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import logging

        import cloudpickle

        from autolora.cli import parallel

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        state = Singleton.get_state()
        payloads = [cloudpickle.dumps((self.hydra_context, self.task_function, self.config, list(overrides), number,
                                       state)) for overrides, number in zip(job_overrides, numbers, strict=True)]
        for number, overrides in zip(numbers, job_overrides, strict=True):
            logging.getLogger(__name__).info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
        statuses = parallel.launch(payloads, numbers, sweep_dir, **self.settings)
        # each point records its own outcome (cli/sweep.py), which the sweep's summary reads; Hydra gets the
        # exit status as the return value, never a failure to raise (a failed point must not end the others)
        return [JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=status,
                          working_dir=str(sweep_dir), task_name=str(self.config.hydra.job.name))
                for overrides, status in zip(job_overrides, statuses, strict=True)]
