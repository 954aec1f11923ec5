"""One run from a composed config: search -> threshold -> retrain -> evaluate -> the run directory.

`run(cfg, run_dir)` connects the steps; `Job` holds what the phases share. Checkpoints make every phase
resumable; outputs are written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import math
import os
import platform
import random
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from autolora import adalora, export, graphs, joblog, runfolder
from autolora import ranks as ranks_io
from autolora.batch import pad_to_bucket
from autolora.checkpoint import Checkpointer, StopFlag
from autolora.distributed import SINGLE, World
from autolora.files import output_error, write_atomic, write_json, write_text
from autolora.inject import check_rank_keys, inject, target_names
from autolora.models import (
    HEAD_CLASSES,
    architecture,
    four_d_attention_mask,
    load_model,
    load_tokenizer,
    resolve_location,
    store_frozen_linears_in,
)
from autolora.quiet import silence_libraries
from autolora.search import search
from autolora.settings import ConfigError, Settings, check_config
from autolora.summary import flat_summary, summary_text
from autolora.tasks.base import DataError, fingerprint, search_split
from autolora.tracking import Tracker, open_tracker, prune_events
from autolora.train import train

PEFT_TASK_TYPES = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}


def autocast_for(settings: Settings):
    """A factory of autocast contexts for the forward passes (bf16) or of no-op contexts (fp32)."""
    if settings.precision == "fp32":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=settings.device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (the search split takes it explicitly)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str:
    """The checkout's commit (with -dirty for local changes), or 'unknown' outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "datasets": datasets.__version__}


class Job:
    """One run: the settings, the task and its data, the checkpointer and the run directory."""

    def __init__(self, settings: Settings, task, run_dir: Path, tokenizer, train, evaluation: Mapping[str, Any],
                 checkpoint: Checkpointer, world: World = SINGLE):
        self.settings, self.task, self.run_dir, self.world = settings, task, run_dir, world
        self.compile = compile_modes(settings, world)
        self.tokenizer, self.train = tokenizer, train  # tokenised
        self.evaluation = dict(evaluation)  # split name (dev, test) -> raw rows; the last is the headline split
        self.checkpoint = checkpoint
        self.autocast = autocast_for(settings)
        self.heads = settings.model.head_modules if task.head != "causal_lm" else ()
        self.seed = settings.seed * 1_000_003  # data-order seeds: search D_tr, D_val, retrain = seed, +1, +2
        self.pad = task.collate(tokenizer)  # built once, not per batch

    def loader(self, dataset, batch_size: int) -> DataLoader:
        """Shuffled training batches; the loops reseed the shuffle per pass (checkpoint.batches_from).
        Data parallel: each process takes its shard of every pass, batch_size / N rows per step."""
        pin = self.settings.device.type == "cuda"
        if not self.world.distributed:
            return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator(),
                              collate_fn=self.collate, pin_memory=pin)
        sampler = DistributedSampler(dataset, num_replicas=self.world.size, rank=self.world.rank, shuffle=True, seed=0)
        return DataLoader(dataset, batch_size=self.world.per_process(batch_size, "batch_size"), sampler=sampler,
                          collate_fn=self.collate, pin_memory=pin)

    def collate(self, rows: list[dict]) -> dict:
        """The task's padded batch, padded on to its length bucket (few shapes: each step shape is captured
        once, graphs.py), its padding mask turned 4D on the host (no mask.all() sync later)."""
        batch = pad_to_bucket(self.pad(rows), self.settings.pad_to_multiple, self.task.max_length,
                              self.tokenizer.pad_token_id)
        model = self.settings.model
        batch["attention_mask"] = four_d_attention_mask(
            batch["attention_mask"], causal=model.kind == "decoder", attn_implementation=model.attn_implementation)
        return batch

    def fresh_model(self):
        """The backbone with the task's head; the modules its checkpoint lacks (the new head, DistilBERT's
        pre_classifier) join the trained heads."""
        try:
            model, new = load_model(self.settings.model, self.task.head, self.task.num_labels, self.tokenizer,
                                    self.settings.seed)
        except OSError as err:
            if err.errno is not None:  # a file-system error, not transformers' "no weights there" (errno None)
                raise
            raise ConfigError(f"model.path={self.settings.model.path}: {str(err).splitlines()[0]}") from None
        self.heads = tuple(dict.fromkeys([*self.heads, *new]))
        if self.task.head != "causal_lm" and not self.heads:
            raise ConfigError(f"{self.settings.model.name} has no new head module and model.head_modules is empty: "
                              f"name the classifier to train, e.g. model.head_modules=[classifier]")
        return model.to(self.settings.device)

    def ready_to_train(self, model: nn.Module) -> nn.Module:
        """Under bf16 autocast, store the frozen matmul weights in bf16 once instead of casting them on every
        forward pass (the same values, less memory: models.store_frozen_linears_in)."""
        if self.settings.precision == "bf16":
            store_frozen_linears_in(model, torch.bfloat16)
        return model

    def evaluate(self, model) -> tuple[dict[str, Any], str | None]:
        """{"eval_split": the headline split, <split>: its metrics, ...} over the evaluation splits (dev, test),
        and the headline split's predictions as text (or None). Data parallel: each process predicts every
        N-th item, the main process scores them all (the others return no metrics)."""
        scores: dict[str, Any] = {}
        text = None
        for split, rows in self.evaluation.items():
            items = self.task.eval_items(rows, self.tokenizer)
            mine = self.task.predict(model, self.world.shard(items), self.tokenizer, device=self.settings.device,
                                     autocast=self.autocast, batch_size=2 * self.settings.retrain.batch_size)
            predictions = self.world.gather_interleaved(mine)
            if self.world.is_main:
                scores[split], text = self.task.score(rows, items, predictions)
        return {"eval_split": list(self.evaluation)[-1], **scores}, text

    def run_search(self, tracker) -> tuple[dict[str, int], dict[str, Any]]:
        """Search on D_tr/D_val, threshold, save ranks.json (with this phase's record); returns both."""
        s = self.settings.search
        self.checkpoint.start_phase("search")
        model = self.fresh_model()
        inject(model, self.settings.model.targets, {n: s.k for n in target_names(model, self.settings.model.targets)},
               lora_alpha=s.lora_alpha, dropout=s.dropout, alpha_norm=s.alpha_norm, trainable_modules=self.heads)
        self.ready_to_train(model)
        tr_idx, val_idx = search_split(len(self.train), s.val_fraction, self.settings.seed)
        train_loader, val_loader = self.loader(self.train.select(tr_idx), s.batch_size), \
            self.loader(self.train.select(val_idx), s.batch_size)
        searched = search(model, train_loader, val_loader, s, compute_loss=self.task.loss, autocast=self.autocast,
                          device=self.settings.device, log=tracker.log, log_every=self.settings.log_every,
                          seed=self.seed, checkpoint=self.checkpoint, progress=self.settings.progress,
                          world=self.world, compile_mode=self.compile["search"])
        gates = searched.gates
        found = ranks_io.select_ranks(gates, s.selection_threshold, s.min_rank)
        self.checkpoint.safe_point("after the search loop, before its evaluation")
        scores = self.evaluate(model)[0] if s.evaluate else {}
        self.checkpoint.safe_point("after the search's evaluation")
        record = {**scores, "steps": s.epochs * len(train_loader),
                  "n_train": len(tr_idx), "n_val": len(val_idx), "trainable_params": trainable(model),
                  "threshold": s.selection_threshold, **self.phase_cost(), "capture": searched.capture,
                  **ranks_io.search_diagnostics(gates, s.selection_threshold)}  # gate spread, noise warning
        if self.world.is_main:
            ranks_io.save(self.run_dir, found, gates, {
                "model": self.settings.model.name, "task": self.task.name, "seed": self.settings.seed,
                "k": s.k, "alpha_norm": s.alpha_norm, "threshold": s.selection_threshold, "min_rank": s.min_rank,
                "search": record})
        return found, record

    def phase_cost(self) -> dict[str, float | None]:
        """The phase's wall time (resumed segments included), GPU-seconds (wall time x GPUs, as in "GPU hours";
        None on CPU) and this process's peak GPU memory."""
        cuda = self.settings.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.settings.device)  # phase boundary, not a hot loop
        wall = round(self.checkpoint.elapsed(), 3)
        return {"wall_time_s": wall, "gpu_seconds": round(wall * self.world.size, 3) if cuda else None,
                "peak_memory_mib": peak_memory(self.settings.device)}

    def run_adalora(self, tracker):
        """The AdaLoRA baseline with the retrain settings: prune to adalora.target_r on average while training.
        Not resumable step by step (peft's allocator state is not checkpointed): a resume restarts it."""
        a = self.settings.adalora
        r = dataclasses.replace(self.settings.retrain, lr=self.settings.retrain.lr * a.lr_scale)
        self.checkpoint.start_phase("retrain")
        loader = self.loader(self.train, r.batch_size)
        peft_model = adalora.wrap(self.fresh_model(), self.settings.model.targets.modules, a,
                                  total_steps=r.epochs * len(loader), lora_alpha=r.lora_alpha, dropout=r.dropout,
                                  task_type=PEFT_TASK_TYPES[self.task.head], heads=self.heads,
                                  fan_in_fan_out=self.settings.model.fan_in_fan_out)
        self.ready_to_train(peft_model)

        def loss(outputs, batch):
            return self.task.loss(outputs, batch) + a.orth_reg_weight * adalora.orthogonality_penalty(peft_model)

        steps = train(peft_model, loader, r, compute_loss=loss, autocast=self.autocast, device=self.settings.device,
                      log=tracker.log, log_every=self.settings.log_every, seed=self.seed + 2,
                      checkpoint=self.checkpoint.without_saving(), progress=self.settings.progress,
                      on_update=peft_model.base_model.update_and_allocate, world=self.world).steps
        self.checkpoint.safe_point("after the AdaLoRA loop, before its evaluation")
        scores, predictions = self.evaluate(peft_model)
        self.checkpoint.safe_point("after the AdaLoRA evaluation")
        record = {**scores, "steps": steps, "n_train": len(self.train), "trainable_params": trainable(peft_model),
                  **self.phase_cost()}
        if predictions is not None:
            write_text(self.run_dir / "predictions.txt", predictions)
        return peft_model, adalora.final_ranks(peft_model), record

    def retrain_ranks(self, model, found: Mapping[str, int] | None) -> dict[str, int]:
        """The ranks to retrain at: the search's, search.ranks_file's, or uniform lora.r for method=lora."""
        s = self.settings
        if s.method == "lora":
            return {name: s.lora_r for name in target_names(model, s.model.targets)}
        if found is not None:
            return dict(found)
        return ranks_io.load(s.search.ranks_file, max_rank=s.search.k)["ranks"]  # inject() checks the keys

    def run_retrain(self, found: Mapping[str, int] | None, tracker):
        """Fresh backbone and head, plain LoRA at the retrain ranks, train on the whole training set, evaluate."""
        r = self.settings.retrain
        self.checkpoint.start_phase("retrain")
        model = self.fresh_model()
        ranks = self.retrain_ranks(model, found)
        inject(model, self.settings.model.targets, ranks, lora_alpha=r.lora_alpha, dropout=r.dropout,
               alpha_norm=None, trainable_modules=self.heads)  # checks every module's actual rank
        self.ready_to_train(model)
        trained = train(model, self.loader(self.train, r.batch_size), r, compute_loss=self.task.loss,
                        autocast=self.autocast, device=self.settings.device, log=tracker.log,
                        log_every=self.settings.log_every, seed=self.seed + 2, checkpoint=self.checkpoint,
                        progress=self.settings.progress, world=self.world, compile_mode=self.compile["retrain"])
        self.checkpoint.safe_point("after the retrain loop, before its evaluation")
        scores, predictions = self.evaluate(model)
        self.checkpoint.safe_point("after the retrain's evaluation")
        record = {**scores, "steps": trained.steps, "n_train": len(self.train), "trainable_params": trainable(model),
                  **self.phase_cost(), "capture": trained.capture}
        if predictions is not None:
            write_text(self.run_dir / "predictions.txt", predictions)
        return model, ranks, record


def compile_modes(settings: Settings, world: World) -> dict[str, str]:
    """The compile mode of each phase (graphs.resolve_compile): a ConfigError before any data or model loads."""
    reasons = {"search": "search.hypergrad=exact (double backward) steps eagerly"
               if settings.search.hypergrad == "exact" else None, "retrain": None}
    if settings.method == "adalora":
        reasons["retrain"] = "AdaLoRA's rank allocator reads its scores on the host every step"
    try:
        return {phase: graphs.resolve_compile(settings.compile, settings.device, distributed=world.distributed,
                                              eager_only=reason) for phase, reason in reasons.items()}
    except ValueError as err:
        raise ConfigError(str(err)) from None


def peak_memory(device: torch.device) -> float | None:
    """Peak GPU memory of the phase so far in MiB (and reset for the next phase); None on CPU."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 1)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_dir(target: Path, write) -> Path:
    """Fill a folder through a staging folder and a rename: it appears complete or not at all."""
    staging, stale = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    for leftover in (staging, stale):  # left by a killed run
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        write(staging)
    except (OSError, SafetensorError) as err:  # a full disk: safetensors reports it as its own error type
        shutil.rmtree(staging, ignore_errors=True)
        raise output_error(target, err) from err
    if target.exists():  # a resumed run killed after this rename but before metrics.json: replace it
        target.rename(stale)
    staging.rename(target)
    shutil.rmtree(stale, ignore_errors=True)
    return target


def save_adapter(job: Job, model, ranks: Mapping[str, int]) -> Path:
    """The retrained adapter in peft format (plus the base weights when they are random-init)."""
    r = job.settings.retrain
    store_frozen_linears_in(model, torch.float32)  # a saved base model holds fp32, as loaded (ready_to_train)
    config = ranks_io.peft_config(ranks, lora_alpha=r.lora_alpha, dropout=r.dropout, modules_to_save=job.heads,
                                  task_type=PEFT_TASK_TYPES[job.task.head],
                                  fan_in_fan_out=job.settings.model.fan_in_fan_out)
    cfg = job.settings.model
    if cfg.is_random:
        plain = export.unwrap(model)
        base_dir = save_dir(job.run_dir / "base_model",
                            lambda d: (plain.save_pretrained(d), job.tokenizer.save_pretrained(d)))
        config.base_model_name_or_path = str(base_dir)
    else:
        config.base_model_name_or_path = resolve_location(cfg.path)
    peft_model = export.to_peft(model, config)
    return write_adapter(job, peft_model.save_pretrained)


def write_adapter(job: Job, save_weights) -> Path:
    """The adapter folder: peft's files, the tokenizer and (classification, NER) labels.json, the class names in
    id order, so that AutoPeftModelFor<head>.from_pretrained(folder, num_labels=len(labels)) loads it anywhere."""
    labels = getattr(job.task, "labels", None)

    def fill(folder: Path) -> None:
        save_weights(folder)
        job.tokenizer.save_pretrained(folder)
        if labels:
            write_json(folder / "labels.json", list(labels))

    return save_dir(job.run_dir / "adapter", fill)


def resume_position(job: Job) -> tuple[str, int]:
    """(phase, steps done) a resumed run continues from, for pruning events logged after it."""
    saved = job.checkpoint.load("retrain") or job.checkpoint.load("search")
    if saved is not None:
        return saved["phase"], saved["step"]
    searched = job.settings.method == "lora" or (job.run_dir / "ranks.json").is_file()
    return ("retrain" if searched else "search"), 0


def run(cfg: DictConfig, run_dir: Path, world: World = SINGLE, *, sweep: bool = False,
        hydra_files: Mapping[str, str] | None = None, stop: StopFlag | None = None) -> dict[str, Any] | None:
    """The whole pipeline for one composed config; returns the metrics written to metrics.json (None for a
    finished sweep point that a resumed sweep skips).

    Order: every check that needs only the config, the folder and the data files, then the folder is claimed
    (runfolder.claim, under its lock), then models load. `hydra_files` (name -> YAML) go to run_dir/.hydra of a
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
    if decided.action == "skip":
        print(f"autolora-run: {run_dir} holds a finished run: skipped", flush=True)
        return None
    with (stop or StopFlag()).installed() as stop:
        checkpoint = Checkpointer(run_dir, settings.checkpoint_every, world, settings.device, stop)
        seed_everything(settings.seed)
        splits, tokenizer = load_inputs(settings, task)
        checkpoint.safe_point("before the run started", started=False)
        first_files = {"config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
                       **{f".hydra/{name}": text for name, text in (hydra_files or {}).items()}}
        lock = None

        def take() -> None:
            nonlocal lock
            lock = runfolder.claim(decided, fingerprint(splits), first_files, own_logs)

        world.share_outcome(take, ConfigError)
        joblog.folder_claimed()
        try:
            job = Job(settings, task, run_dir, tokenizer, task.encode(splits.train, tokenizer), splits.scored(),
                      checkpoint, world)
            return run_job(job, decided.action == "resume", resolved, splits)
        finally:
            if lock is not None:
                lock.release()


def load_inputs(settings: Settings, task):
    """(splits, tokenizer), checked: data rows, the tokenizer against task.max_length, the model's architecture
    and a ranks file against it. Everything here runs before the run folder is claimed and a model loads."""
    splits = task.load(settings.data)
    check_labels(splits)
    try:
        tokenizer = load_tokenizer(settings.model, split_words=task.head == "token_classification")
    except OSError as err:
        if err.errno is not None:  # a file-system error, not transformers' "cannot find/connect" (errno None)
            raise
        where = settings.model.tokenizer or settings.model.path
        raise ConfigError(f"tokenizer of model {settings.model.name} ({where}): {str(err).splitlines()[0]}") from None
    minimum = tokenizer.num_special_tokens_to_add(pair=True) + 2
    if task.max_length < minimum:
        raise ConfigError(f"task.max_length={task.max_length} is too small for {task.name} with this tokenizer "
                          f"(at least {minimum}: its special tokens plus two text tokens)")
    check_architecture(settings, task)
    return splits, tokenizer


def check_architecture(settings: Settings, task) -> None:
    """The model, built from its config on the meta device (no weights, no memory), has the matrices the model
    config targets, and a ranks file names exactly those: a model.path of another architecture, or a ranks
    file of another model, is refused before the run folder is claimed."""
    cfg = settings.model
    if cfg.gguf_file:  # its config is read from the whole GGUF file (seconds); the packaged GGUF models match
        return
    where = f"model.path={cfg.path}" if cfg.path else f"model {cfg.name} (random init)"
    config = architecture(cfg)  # no weights; a path that holds no model is one line (FileNotFoundError)
    if task.head != "causal_lm":
        config.num_labels = task.num_labels
    try:
        with torch.device("meta"):
            skeleton = HEAD_CLASSES[task.head].from_config(config)
    except (OSError, ValueError, KeyError) as err:  # unreachable hub id, unknown model_type, ...
        raise ConfigError(f"{where}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    try:
        names = target_names(skeleton, cfg.targets)
    except ValueError as err:
        raise ConfigError(f"{err}: {where} is a {config.model_type} model, which model={cfg.name} does not "
                          "describe; choose the model config of that architecture (model=...)") from None
    if settings.method == "autolora" and settings.search.ranks_file is not None:
        check_rank_keys(names, ranks_io.load(settings.search.ranks_file, max_rank=settings.search.k)["ranks"])


def check_labels(splits) -> None:
    """Numeric labels (regression scores) must be finite: a NaN would read as divergence in training and give
    a NaN metric; files are checked line by line when read, this covers data from the hub."""
    for name, split in (("train", splits.train), *splits.scored().items()):
        if "labels" in split.column_names and split.features["labels"].dtype.startswith("float"):
            bad = [i for i, value in enumerate(split["labels"]) if not math.isfinite(value)]
            if bad:
                raise DataError(f"{splits.origin}: {name} row {bad[0] + 1} has a non-finite score ({len(bad)} rows in all)")


def run_job(job: Job, resumed: bool, resolved: Mapping[str, Any], splits) -> dict[str, Any]:
    """The claimed run: events, tracker, the phases, the summary."""
    settings, task, run_dir, world = job.settings, job.task, job.run_dir, job.world
    if not world.is_main:
        return run_phases(job, Tracker(None), {})
    if resumed:
        prune_events(run_dir / "events.jsonl", *resume_position(job))
    if getattr(task, "labels", None):  # class id -> label, as the model's head numbers them
        write_json(run_dir / "labels.json", list(task.labels))
    tracker = open_tracker(settings.logger, run_dir, resolved,
                           run_name=f"{task.name}-{settings.model.name}-{settings.method}-s{settings.seed}")
    record: dict[str, Any] = {
        "task": task.name, "model": settings.model.name, "method": settings.method, "seed": settings.seed,
        "main_metric": task.main_metric, "data": splits.origin, "n_train": len(job.train),
        **{f"n_{split}": len(rows) for split, rows in job.evaluation.items()},
        "device": device_name(settings.device), "precision": settings.precision, "compile": job.compile,
        "git_commit": git_commit(),
        "versions": versions(), "command": " ".join(sys.argv), "processes": world.size,
        "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),  # the report's date
    }
    if tracker.where() is not None:
        record["wandb"] = tracker.where()
    try:
        record = run_phases(job, tracker, record)
    finally:
        tracker.close()
    print(summary_text(record, run_dir), flush=True)
    return record


def run_phases(job: Job, tracker: Tracker, record: dict[str, Any]) -> dict[str, Any]:
    """Search (or the saved ranks), retrain or AdaLoRA, evaluate; the main process writes the outputs."""
    settings, run_dir, main = job.settings, job.run_dir, job.world.is_main
    job.checkpoint.safe_point("before the first phase")
    found = None
    if settings.method == "autolora" and settings.search.ranks_file is None:
        if (run_dir / "ranks.json").is_file():  # resumed after a finished search (a new run starts in an empty folder)
            saved = ranks_io.load(run_dir / "ranks.json")
            found, record["search"] = saved["ranks"], saved["search"]
        else:
            found, record["search"] = job.run_search(tracker)
        if not any(found.values()):
            raise ConfigError(f"the search kept no component: every rank is 0 at threshold "
                              f"{settings.search.selection_threshold:g}, so there is nothing to retrain; "
                              f"{run_dir / 'ranks.json'} holds the search and its metrics; lower search.threshold "
                              "or set search.min_rank >= 1")
    elif settings.method == "autolora":
        record["ranks_file"] = settings.search.ranks_file
    record["ranks_from"] = {"lora": "uniform", "adalora": "adalora"}.get(
        settings.method, "search" if found is not None else "ranks_file")
    if settings.method == "adalora":
        model, ranks, record["retrain"] = job.run_adalora(tracker)
        if main:
            record["adapter"] = str(write_adapter(job, model.save_pretrained))
    else:
        model, ranks, record["retrain"] = job.run_retrain(found, tracker)
        if main:
            record["adapter"] = str(save_adapter(job, model, ranks))
    record["ranks"] = dict(ranks)
    if main:
        warn_undefined_metrics(record)
        record["figures"] = [str(save_rank_figure(job, ranks))]
        write_json(run_dir / "metrics.json", record)
        tracker.summary(flat_summary(record), ranks)
    return record


def warn_undefined_metrics(record: Mapping[str, Any]) -> None:
    """A NaN metric (a correlation of constant predictions, say) is written as null; say so once per split."""
    for phase in ("search", "retrain"):
        for split in ("dev", "test"):  # the evaluation splits a phase records its scores under (Job.evaluate)
            scores = (record.get(phase) or {}).get(split) or {}
            undefined = [k for k, v in scores.items() if isinstance(v, float) and not math.isfinite(v)]
            if undefined:
                print(f"autolora-run: warning: {phase} {split} {', '.join(undefined)} undefined (NaN: constant "
                      "predictions or constant gold scores); written as null", file=sys.stderr)


def distributed_settings(settings: Settings, world: World) -> Settings:
    """This process's device (cuda:LOCAL_RANK or cpu); bars on the main process only; batch sizes that split."""
    from autolora import distributed

    if settings.search.hypergrad == "exact" and settings.method == "autolora":
        raise ConfigError("search.hypergrad=exact runs in one process only (it is the reference for fd)")
    for key, size in (("search.batch_size", settings.search.batch_size), ("retrain.batch_size",
                                                                           settings.retrain.batch_size)):
        try:
            world.per_process(size, key)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if not world.is_main:
        os.environ["TQDM_DISABLE"] = "1"  # generation's bar too
    return dataclasses.replace(settings, device=distributed.init(world, settings.device.type),
                               progress=settings.progress and world.is_main)


def save_rank_figure(job: Job, ranks: Mapping[str, int]) -> Path:
    from autolora.figures import plt, rank_heatmap

    k = job.settings.search.k if job.settings.method == "autolora" else job.settings.lora_r
    fig = rank_heatmap(ranks, k, f"{job.task.name} · {job.settings.model.name} · {job.settings.method}")
    path = job.run_dir / "ranks.png"
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)
    return path


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


