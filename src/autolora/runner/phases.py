"""The phases of each method, by name (method.registry): AutoLoRA's search and retrain, uniform LoRA, AdaLoRA, EVA.

A method's phases train a model and return an Outcome; the pipeline writes what it holds. Every phase starts
from a fresh backbone (the same seed gives the same weights) and ends with an evaluation between two safe
points, so a stop request lands where the state on disk is whole.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from autolora import layout
from autolora.errors import ConfigError
from autolora.method import adalora as adalora_method
from autolora.method import eva as eva_method
from autolora.method import ranks as ranks_io
from autolora.method import readout
from autolora.method.inject import inject
from autolora.method.registry import METHODS
from autolora.method.search import Searched, search
from autolora.method.train import train
from autolora.models.targets import describe, target_names
from autolora.record import PhaseRecord, SearchRecord
from autolora.runner import outputs
from autolora.runner.job import PEFT_TASK_TYPES, Job, trainable
from autolora.runner.tracking import Tracker
from autolora.tasks.base import search_split


@dataclass
class Outcome:
    """What a method's phases produced: the trained model, its ranks, the phase records, where the ranks came
    from, and how to write the adapter (ours through export.py, or peft's own for AdaLoRA and EVA)."""

    model: nn.Module
    ranks: dict[str, int]
    retrain: PhaseRecord
    ranks_from: str  # search | ranks_file | uniform | adalora | eva
    write_adapter: Callable[[], Path]
    search: SearchRecord | None = None


def search_start(job: Job) -> tuple[nn.Module, DataLoader, DataLoader]:
    """The search's model at its start (k components per target matrix, B = 0) and its D_tr, D_val loaders."""
    s = job.settings.search
    model = job.fresh_model()
    inject(model, job.settings.model.targets, {n: s.k for n in target_names(model, job.settings.model.targets)},
           lora_alpha=s.lora_alpha, dropout=s.dropout, alpha_norm=s.alpha_norm,
           trainable_modules=job.heads if s.train_head else ())
    job.ready_to_train(model)
    tr_idx, val_idx = search_split(len(job.train), s.val_fraction, job.settings.seed)
    train_loader = job.loader(job.train.select(tr_idx), s.batch_size)
    val_loader = job.loader(job.train.select(val_idx), s.val_batch_size or s.batch_size)
    return model, train_loader, val_loader


def run_search(job: Job, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, log) -> Searched:
    """The search from search_start's model and loaders (resuming from the job's checkpoint if it holds one)."""
    return search(model, train_loader, val_loader, job.settings.search, compute_loss=job.task.loss, seed=job.seed,
                  loop=job.loop("search", log))


def search_phase(job: Job, tracker: Tracker) -> tuple[dict[str, int], SearchRecord]:
    """Search on D_tr/D_val, threshold, save ranks.json (with this phase's record); returns both."""
    s = job.settings.search
    job.checkpoint.start_phase("search")
    model, train_loader, val_loader = search_start(job)
    searched = run_search(job, model, train_loader, val_loader, tracker.log)
    every = readout.every_readout(gates=searched.gates, alphas=searched.alphas, spectra=searched.spectra,
                                  threshold=s.selection_threshold, min_rank=s.min_rank, energy=s.energy)
    found = every[s.readout]
    job.checkpoint.safe_point("after the search loop, before its evaluation")
    scores = job.evaluate(model)[0] if s.evaluate else {}
    job.checkpoint.safe_point("after the search's evaluation")
    record = SearchRecord(scores=scores, steps=s.epochs * len(train_loader), n_train=len(train_loader.dataset),
                          n_val=len(val_loader.dataset), trainable_params=trainable(model),
                          threshold=s.selection_threshold, cost=job.phase_cost(),
                          capture=searched.capture,
                          gate_report=ranks_io.search_diagnostics(searched.gates, s.selection_threshold,
                                                                      searched.noise))
    if job.world.is_main:
        ranks_io.save(job.run_dir, found, searched.gates, {
            "model": job.settings.model.name, "task": job.task.name, "seed": job.settings.seed,
            "targets": describe(job.settings.model.targets), "k": s.k, "alpha_norm": s.alpha_norm,
            "threshold": s.selection_threshold, "min_rank": s.min_rank,
            "readout": s.readout, "energy": s.energy, "readouts": every, "raw_alpha": searched.alphas,
            "update_spectra": {name: values for name, (values, _) in searched.spectra.items()},
            "search": record.to_json()})
    return found, record


def retrain_phase(job: Job, ranks: Mapping[str, int] | None, tracker: Tracker
                  ) -> tuple[nn.Module, dict[str, int], PhaseRecord]:
    """Fresh backbone and head, plain LoRA at these ranks (None: lora.r on every target), train on the whole
    training set, evaluate."""
    r = job.settings.retrain
    job.checkpoint.start_phase("retrain")
    model = job.fresh_model()
    if ranks is None:
        ranks = {name: job.settings.lora_r for name in target_names(model, job.settings.model.targets)}
    ranks = dict(ranks)
    inject(model, job.settings.model.targets, ranks, lora_alpha=r.lora_alpha, dropout=r.dropout,
           alpha_norm=None, trainable_modules=job.heads)  # checks every module's actual rank
    job.ready_to_train(model)
    trained = train(model, job.loader(job.train, r.batch_size), r, compute_loss=job.task.loss, seed=job.seed + 2,
                    loop=job.loop("retrain", tracker.log))
    job.checkpoint.safe_point("after the retrain loop, before its evaluation")
    scores, predictions = job.evaluate(model)
    job.checkpoint.safe_point("after the retrain's evaluation")
    record = PhaseRecord(scores, trained.steps, len(job.train), trainable(model), job.phase_cost(), trained.capture)
    outputs.write_predictions(job, predictions)
    return model, ranks, record


def run_autolora(job: Job, tracker: Tracker) -> Outcome:
    """The search (or, resumed after it, its ranks.json; or search.ranks_file's ranks), then the retrain."""
    search_record, origin = None, "search"
    if job.given_ranks is not None:
        found, origin = dict(job.given_ranks), "ranks_file"
    elif (job.run_dir / layout.RANKS).is_file():  # resumed after a finished search (a new run starts empty)
        saved = ranks_io.load(job.run_dir / layout.RANKS)
        found, search_record = saved["ranks"], SearchRecord.from_json(saved["search"])
    else:
        found, search_record = search_phase(job, tracker)
    if origin == "search" and not any(found.values()):
        s = job.settings.search
        steps = search_record.steps if search_record is not None else "?"
        raise ConfigError(f"the search kept no component: every rank is 0 under search.readout={s.readout} "
                          f"(threshold {s.selection_threshold:g}, energy {s.energy:g}; undecided matrices, whose "
                          "gates never moved, get search.min_rank), so there is nothing to retrain; "
                          f"{job.run_dir / layout.RANKS} holds the search and every readout's ranks. After "
                          f"{steps} search steps: search longer (more data or search.epochs; LoRA's B starts at 0, "
                          "so the first step barely moves the gates), lower search.threshold, try another "
                          "search.readout or set search.min_rank >= 1")
    model, ranks, record = retrain_phase(job, found, tracker)
    return Outcome(model, ranks, record, origin, lambda: outputs.save_adapter(job, model, ranks), search_record)


def run_lora(job: Job, tracker: Tracker) -> Outcome:
    """Uniform-rank LoRA (lora.r everywhere): the retrain phase alone."""
    model, ranks, record = retrain_phase(job, None, tracker)
    return Outcome(model, ranks, record, "uniform", lambda: outputs.save_adapter(job, model, ranks))


def run_adalora(job: Job, tracker: Tracker) -> Outcome:
    """The AdaLoRA baseline with the retrain settings: prune to adalora.target_r on average while training.
    Not resumable step by step (peft's allocator state is not checkpointed): a resume restarts it."""
    a = job.settings.adalora
    r = dataclasses.replace(job.settings.retrain, lr=job.settings.retrain.lr * a.lr_scale)
    job.checkpoint.start_phase("retrain")
    loader = job.loader(job.train, r.batch_size)
    peft_model = adalora_method.wrap(job.fresh_model(), job.settings.model.targets.modules, a,
                                     total_steps=r.epochs * len(loader), lora_alpha=r.lora_alpha, dropout=r.dropout,
                                     task_type=PEFT_TASK_TYPES[job.task.head], heads=job.heads,
                                     fan_in_fan_out=job.settings.model.fan_in_fan_out)
    job.ready_to_train(peft_model)

    def loss(model_outputs, batch):
        return (job.task.loss(model_outputs, batch)
                + a.orth_reg_weight * adalora_method.orthogonality_penalty(peft_model))

    loop = dataclasses.replace(job.loop("retrain", tracker.log), checkpoint=job.checkpoint.without_saving())
    steps = train(peft_model, loader, r, compute_loss=loss, seed=job.seed + 2, loop=loop,
                  on_update=peft_model.base_model.update_and_allocate).steps
    job.checkpoint.safe_point("after the AdaLoRA loop, before its evaluation")
    scores, predictions = job.evaluate(peft_model)
    job.checkpoint.safe_point("after the AdaLoRA evaluation")
    record = PhaseRecord(scores, steps, len(job.train), trainable(peft_model), job.phase_cost(), None)
    outputs.write_predictions(job, predictions)
    ranks = adalora_method.final_ranks(peft_model)
    return Outcome(peft_model, ranks, record, "adalora",
                   lambda: outputs.write_adapter(job, peft_model.save_pretrained))


def eva_batches(job: Job, n: int, batch_size: int) -> list[dict]:
    """The batches of EVA's SVD: the first n (at most one pass) of the training set shuffled with seed + 3, as
    whole batches: one process computes the SVD for all (data parallel: not this process's shard)."""
    loader = DataLoader(job.train, batch_size=batch_size, shuffle=True, collate_fn=job.collate,
                        generator=torch.Generator().manual_seed(job.seed + 3))
    return list(itertools.islice(loader, n))


def run_eva(job: Job, tracker: Tracker) -> Outcome:
    """The EVA baseline with the retrain settings: LoRA whose ranks (eva.r x modules in all) and A come from
    the SVD of each target's inputs on eva.n_batches training batches, then trained as method=lora trains.
    The SVD runs on the main process and is shared; a resumed run takes the ranks of its checkpoint (whose
    weights the loop restores), so it continues step by step like LoRA."""
    e, r = job.settings.eva, job.settings.retrain
    job.checkpoint.start_phase("retrain")
    peft_model = eva_method.wrap(job.fresh_model(), job.settings.model.targets.modules, e, lora_alpha=r.lora_alpha,
                                 dropout=r.dropout, task_type=PEFT_TASK_TYPES[job.task.head], heads=job.heads,
                                 fan_in_fan_out=job.settings.model.fan_in_fan_out)
    saved = job.checkpoint.load("retrain")
    if saved is not None:
        state = eva_method.placeholder_state(peft_model, saved["params"])
    else:  # before ready_to_train: the SVD's forward passes run on the fp32 weights, without autocast
        state = job.world.share_outcome(lambda: eva_method.svd_state(
            peft_model, eva_batches(job, e.n_batches, r.batch_size), e, progress=job.settings.progress), ConfigError)
    ranks = eva_method.load(peft_model, state, e)  # checks every module's rank and the r x modules total
    job.ready_to_train(peft_model)
    trained = train(peft_model, job.loader(job.train, r.batch_size), r, compute_loss=job.task.loss,
                    seed=job.seed + 2, loop=job.loop("retrain", tracker.log))
    job.checkpoint.safe_point("after the EVA loop, before its evaluation")
    scores, predictions = job.evaluate(peft_model)
    job.checkpoint.safe_point("after the EVA evaluation")
    record = PhaseRecord(scores, trained.steps, len(job.train), trainable(peft_model), job.phase_cost(),
                         trained.capture)
    outputs.write_predictions(job, predictions)
    return Outcome(peft_model, ranks, record, "eva", lambda: outputs.write_adapter(job, peft_model.save_pretrained))


PHASES: dict[str, Callable[[Job, Tracker], Outcome]] = {
    "autolora": run_autolora, "lora": run_lora, "adalora": run_adalora, "eva": run_eva}
assert PHASES.keys() == METHODS.keys(), "every method of method.registry needs its phases here"
