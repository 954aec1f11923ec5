"""One run from a composed config: check -> claim the folder -> the method's phases -> metrics.json.

`execute(cfg, run_dir)` is the whole run; `run_claimed` is what happens once the folder is the run's. The
phases themselves (search, retrain, AdaLoRA) are in runner.phases, the checks in runner.preflight, the files
in runner.outputs. Checkpoints make every phase resumable; outputs are written atomically.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autolora import layout
from autolora.engine import compile_cache
from autolora.engine.checkpoint import Checkpointer, StopFlag
from autolora.engine.distributed import SINGLE, World
from autolora.errors import ConfigError
from autolora.files import write_json
from autolora.models.targets import describe
from autolora.provenance import device_name, git_commit, versions
from autolora.record import RunRecord
from autolora.runner import joblog, outputs
from autolora.runner import run_folder as runfolder
from autolora.runner.job import Job, compile_modes, seed_everything
from autolora.runner.phases import PHASES
from autolora.runner.preflight import Inputs, distributed_settings, load_inputs, load_splits
from autolora.runner.quiet import silence_libraries
from autolora.runner.run_config import check_config
from autolora.runner.summary import flat_summary, summary_text
from autolora.runner.tracking import Tracker, open_tracker, prune_events
from autolora.tasks.base import fingerprint


def execute(cfg: DictConfig, run_dir: Path, world: World = SINGLE, *, sweep: bool = False,
            hydra_files: Mapping[str, str] | None = None, stop: StopFlag | None = None) -> dict[str, Any] | None:
    """The whole pipeline for one composed config; returns what metrics.json holds (None for a finished sweep
    point that a resumed sweep skips).

    Order: every check that needs only the config, the folder and the data files, then the folder is claimed
    (run_folder.claim, under its lock), then models load. `hydra_files` (name -> YAML) go to run_dir/.hydra of a
    new run. Data parallel (world.size > 1, under torchrun): every process trains on its shard; rank 0's
    run_dir is the run's, and only rank 0 writes files, logs and progress bars."""
    if "hydra" in cfg:  # compose(return_hydra_config=True) in tests; @hydra.main strips it itself
        cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    silence_libraries(OmegaConf.select(cfg, "verbose") is True)  # before check_config reads the model's config
    settings, task = check_config(cfg)
    if world.distributed:
        settings = distributed_settings(settings, world)
    compile_modes(settings, world)  # an impossible compile mode fails now, before data and model load
    resolved = OmegaConf.to_container(cfg, resolve=True)
    own_logs = joblog.files_in(run_dir)  # Hydra's log of this very job, if its logging config opened one already
    decided = world.share_outcome(lambda: runfolder.plan(run_dir, resolved, settings.resume, sweep, own_logs),
                                  ConfigError)
    run_dir = decided.path  # rank 0's folder on every process: all read its checkpoint
    with (stop or StopFlag()).installed() as stop:
        checkpoint = Checkpointer(run_dir, settings.checkpoint_every, world, settings.device, stop)
        seed_everything(settings.seed)
        splits = load_splits(settings, task)
        if decided.action == "skip":  # finished, but on this data? Its result would stand for the new data
            runfolder.check_same_data(run_dir, fingerprint(splits), finished=True)
            print(f"autolora-run: {run_dir} holds a finished run: skipped", flush=True)
            return None  # before the tokenizer and the model's files: a skipped point reads only its data
        inputs = load_inputs(settings, task, splits)
        checkpoint.safe_point("before the run started", started=False)
        first_files = {layout.CONFIG: OmegaConf.to_yaml(cfg, resolve=True),
                       **{f".hydra/{name}": text for name, text in (hydra_files or {}).items()}}
        lock = None

        def take() -> None:
            nonlocal lock
            lock = runfolder.claim(decided, fingerprint(inputs.splits), first_files, own_logs)

        world.share_outcome(take, ConfigError)
        joblog.folder_claimed()
        try:
            job = Job(settings, task, run_dir, inputs.tokenizer, task.encode(inputs.splits.train, inputs.tokenizer),
                      inputs.splits.scored(), checkpoint, world, inputs.given_ranks)
            return run_claimed(job, decided.action == "resume", resolved, inputs)
        finally:
            if lock is not None:
                lock.release()


def run_claimed(job: Job, resumed: bool, resolved: Mapping[str, Any], inputs: Inputs) -> dict[str, Any]:
    """The claimed run: events and tracker, the method's phases, the outputs, metrics.json and the summary.
    Processes other than the main one train their shard and write nothing."""
    settings, task, run_dir = job.settings, job.task, job.run_dir
    job.checkpoint.safe_point("before the first phase")
    # before anything compiles: the sweep's runs share what inductor and triton compiled (engine/compile_cache.py)
    caches = compile_cache.use(settings.compile_cache) if "inductor" in job.compile.values() else None
    if not job.world.is_main:
        PHASES[settings.method](job, Tracker(None))
        return {}
    if resumed:
        prune_events(run_dir / layout.EVENTS, *resume_position(job))
    if getattr(task, "labels", None):  # class id -> label, as the model's head numbers them
        write_json(run_dir / layout.LABELS, list(task.labels))
    tracker = open_tracker(settings.logger, run_dir, resolved,
                           run_name=f"{task.name}-{settings.model.name}-{settings.method}-s{settings.seed}")
    record = RunRecord(
        task=task.name, model=settings.model.name, method=settings.method, seed=settings.seed,
        main_metric=task.main_metric, data=inputs.splits.origin, n_train=len(job.train),
        n_eval={split: len(rows) for split, rows in job.evaluation.items()}, device=device_name(settings.device),
        precision=settings.precision, compile=job.compile,
        compile_reason={phase: choice.reason for phase, choice in job.compile_choice.items()},
        compile_cache=None if caches is None else caches["TORCHINDUCTOR_CACHE_DIR"],
        git_commit=git_commit(), versions=versions(),
        command=" ".join(sys.argv), processes=job.world.size,
        started_at=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        targets=describe(settings.model.targets), wandb=tracker.where())
    try:
        outcome = PHASES[settings.method](job, tracker)
        record.search, record.retrain, record.ranks_from = outcome.search, outcome.retrain, outcome.ranks_from
        if outcome.ranks_from == "ranks_file":
            record.ranks_file, record.ranks_readout = settings.search.ranks_file, settings.search.ranks_readout
        record.adapter = str(outcome.write_adapter())
        record.ranks = dict(outcome.ranks)
        record.figures = [str(outputs.save_rank_figure(job, outcome.ranks))]
        metrics = record.to_json()
        outputs.warn_undefined_metrics(metrics)
        write_json(run_dir / layout.METRICS, metrics)
        tracker.summary(flat_summary(metrics), outcome.ranks)
    finally:
        tracker.close()
    print(summary_text(metrics, run_dir), flush=True)
    return metrics


def resume_position(job: Job) -> tuple[str, int]:
    """(phase, steps done) a resumed run continues from, for pruning events logged after it."""
    saved = job.checkpoint.load("retrain") or job.checkpoint.load("search")
    if saved is not None:
        return saved["phase"], saved["step"]
    searched = job.settings.method != "autolora" or (job.run_dir / layout.RANKS).is_file()
    return ("retrain" if searched else "search"), 0
