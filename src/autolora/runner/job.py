"""What the phases of one run share: the settings, the task and its data, the loaders, the checkpointer, the
run folder; and how a fresh model is built and evaluated."""

from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from autolora.engine import auto_compile, capture
from autolora.engine.batch import pad_to_bucket
from autolora.engine.checkpoint import Checkpointer
from autolora.engine.distributed import SINGLE, World
from autolora.engine.loop import Loop
from autolora.errors import ConfigError
from autolora.models.backbone import load_model, takes_4d_mask
from autolora.models.runtime import cache_position_bias, four_d_attention_mask, store_frozen_linears_in
from autolora.record import PhaseCost
from autolora.runner.run_config import Settings
from autolora.tasks.base import search_split

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


def eager_reasons(settings: Settings) -> dict[str, str | None]:
    """Per phase, why it must step eagerly whatever the device (None: it may capture)."""
    reasons = {"search": "search.hypergrad=exact (double backward) steps eagerly"
               if settings.search.hypergrad == "exact" else None, "retrain": None}
    if settings.method == "adalora":
        reasons["retrain"] = "AdaLoRA's rank allocator reads its scores on the host every step"
    return reasons


def compile_modes(settings: Settings, world: World) -> dict[str, str]:
    """Where each phase can capture (capture.resolve_compile: auto -> graphs or off): a ConfigError before any
    data or model loads. compile_choices then decides auto's graphs-or-inductor from the data's size."""
    try:
        return {phase: capture.resolve_compile(settings.compile, settings.device, distributed=world.distributed,
                                               eager_only=reason) for phase, reason in eager_reasons(settings).items()}
    except ValueError as err:
        raise ConfigError(str(err)) from None


def phase_plans(settings: Settings, task, n_train: int) -> dict[str, auto_compile.PhasePlan]:
    """Each phase's steps and batch shapes, as compile=auto weighs them (the search trains on D_tr only)."""
    s, r = settings.search, settings.retrain
    n_search, n_val = (map(len, search_split(n_train, s.val_fraction, settings.seed)) if n_train >= 2
                       else (n_train, n_train))
    common = dict(model=settings.model.name, max_length=task.max_length, pad_to_multiple=settings.pad_to_multiple)
    search_steps = s.epochs * math.ceil(n_search / s.batch_size)
    val_batch = s.val_batch_size or s.batch_size  # as runner/phases.search_phase's validation loader
    return {
        "search": auto_compile.PhasePlan(step=auto_compile.search_step(s.hypergrad, s.fd, s.eta),
                                         steps=search_steps, epochs=s.epochs,
                                         batch_size=s.batch_size, short_last_batch=n_search % s.batch_size != 0,
                                         val_batch_size=val_batch, val_short_last_batch=n_val % val_batch != 0,
                                         val_passes=math.ceil(search_steps / max(1, math.ceil(n_val / val_batch))),
                                         **common),
        "retrain": auto_compile.PhasePlan(step="fixed_rank", steps=r.epochs * math.ceil(n_train / r.batch_size),
                                          epochs=r.epochs, batch_size=r.batch_size,
                                          short_last_batch=n_train % r.batch_size != 0, **common)}


def compile_choices(settings: Settings, world: World, task, n_train: int) -> dict[str, auto_compile.Choice]:
    """The mode of each phase and why (engine/auto_compile.py): compile=auto picks inductor where the phase's
    steps repay its compilation, else graphs; off where capture cannot run."""
    feasible, plans = compile_modes(settings, world), phase_plans(settings, task, n_train)
    blockers = {phase: capture.capture_blockers(settings.device, distributed=world.distributed, eager_only=reason)
                for phase, reason in eager_reasons(settings).items()}
    return {phase: auto_compile.choose(settings.compile, mode, plans[phase], (blockers[phase] or [None])[0])
            for phase, mode in feasible.items()}


def peak_memory(device: torch.device) -> float | None:
    """Peak GPU memory of the phase so far in MiB (and reset for the next phase); None on CPU."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 1)


def trainable(model: nn.Module) -> int:
    """The number of parameters the phase trains."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Job:
    """One run: the settings, the task and its data, the checkpointer and the run directory."""

    def __init__(self, settings: Settings, task, run_dir: Path, tokenizer, train, evaluation: Mapping[str, Any],
                 checkpoint: Checkpointer, world: World = SINGLE, given_ranks: Mapping[str, int] | None = None):
        self.settings, self.task, self.run_dir, self.world = settings, task, run_dir, world
        self.tokenizer, self.train = tokenizer, train  # tokenised
        self.compile_choice = compile_choices(settings, world, task, len(train))
        self.compile = {phase: choice.mode for phase, choice in self.compile_choice.items()}
        self.evaluation = dict(evaluation)  # split name (dev, test) -> raw rows; the last is the headline split
        self.checkpoint = checkpoint
        self.given_ranks = given_ranks  # search.ranks_file's ranks, read once by the preflight
        self.autocast = autocast_for(settings)
        self.heads = settings.model.head_modules if task.head != "causal_lm" else ()
        self.seed = settings.seed * 1_000_003  # data-order seeds: search D_tr, D_val, retrain = seed, +1, +2
        self.pad = task.collate(tokenizer)  # built once, not per batch
        self.mask_4d = takes_4d_mask(settings.model, task.head)  # False: the model reads its 2D padding mask

    def loop(self, phase: str, log) -> Loop:
        """The run-side settings of the phase's training loop (search or retrain)."""
        s = self.settings
        return Loop(device=s.device, autocast=self.autocast, log=log, log_every=s.log_every,
                    checkpoint=self.checkpoint, progress=s.progress, world=self.world,
                    compile_mode=self.compile[phase])

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
        once, engine/capture.py), its padding mask turned 4D on the host (no mask.all() sync later) where the
        architecture takes a 4D mask."""
        batch = pad_to_bucket(self.pad(rows), self.settings.pad_to_multiple, self.task.max_length,
                              self.tokenizer.pad_token_id)
        model = self.settings.model
        if self.mask_4d:
            batch["attention_mask"] = four_d_attention_mask(batch["attention_mask"], causal=model.kind == "decoder",
                                                            attn_implementation=model.attn_implementation)
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
        # MPNet's position bias once per length, not rebuilt on the host and copied to the GPU in every forward
        # pass (transformers < 5.18), which CUDA graph capture refuses (models.runtime.cache_position_bias)
        cache_position_bias(model)
        return model.to(self.settings.device)

    def ready_to_train(self, model: nn.Module) -> nn.Module:
        """Under bf16 autocast, store the frozen matmul weights in bf16 once instead of casting them on every
        forward pass (the same values, less memory: models.runtime.store_frozen_linears_in)."""
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

    def phase_cost(self) -> PhaseCost:
        """The phase's wall time (resumed segments included), GPU-seconds (wall time x GPUs, as in "GPU hours";
        None on CPU) and this process's peak GPU memory."""
        cuda = self.settings.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.settings.device)  # phase boundary, not a hot loop
        wall = round(self.checkpoint.elapsed(), 3)
        return PhaseCost(wall, round(wall * self.world.size, 3) if cuda else None, peak_memory(self.settings.device))
