"""Fixed-rank LoRA fine-tuning: the retrain at the searched ranks and the uniform-rank baseline."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from autolora.engine import capture
from autolora.engine.batch import Batch, model_inputs, to_device
from autolora.engine.checkpoint import batches_from, resume_loop
from autolora.engine.distributed import SINGLE, World
from autolora.engine.loop import Loop
from autolora.engine.loss_window import LossWindow
from autolora.typecheck import at_least, check_ranges, check_types, in_unit_interval, positive_or_none


@dataclass(frozen=True)
class RetrainConfig:
    """The `retrain` config group (conf/retrain/*.yaml)."""

    epochs: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    batch_size: int
    lora_alpha: float  # peft's scaling numerator: scale = lora_alpha / rank of each matrix
    dropout: float
    max_grad_norm: float | None

    def __post_init__(self):
        check_types(self, "retrain")
        check_ranges([
            (self.epochs >= 1, f"retrain.epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"retrain.batch_size must be >= 1, got {self.batch_size}"),
            (in_unit_interval(self.warmup_ratio), f"retrain.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}"),
            (at_least(self.lr, 0), f"retrain.lr must be >= 0, got {self.lr}"),
            (at_least(self.weight_decay, 0), f"retrain.weight_decay must be >= 0, got {self.weight_decay}"),
            (at_least(self.lora_alpha, 0) and self.lora_alpha > 0,
             f"retrain.lora_alpha must be > 0, got {self.lora_alpha}"),
            (in_unit_interval(self.dropout), f"retrain.dropout must lie in [0, 1), got {self.dropout}"),
            (positive_or_none(self.max_grad_norm),
             f"retrain.max_grad_norm must be > 0 or null, got {self.max_grad_norm}"),
        ])


def train_step(model: nn.Module, params: list[Tensor], optimizer: torch.optim.Optimizer, batch: Batch,
               cfg: RetrainConfig, compute_loss: Callable[[object, Batch], Tensor], autocast: Callable,
               on_update: Callable[[], None] | None = None, world: World = SINGLE,
               loss_of: Callable[[Batch], Tensor] | None = None) -> Tensor:
    """One AdamW step on a device-resident batch; returns the loss (a device tensor, no sync).

    on_update runs after the optimiser step and before the gradients are cleared (AdaLoRA's allocator).
    loss_of: the batch's loss (default: the model under autocast, then compute_loss; capture.compiled
    passes an inductor-compiled one). Data parallel: the batch is this process's shard; gradients are
    averaged over processes."""
    loss = (loss_of or model_loss(model, compute_loss, autocast))(batch)
    loss.backward()
    world.average_grads(params)
    if cfg.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
    optimizer.step()
    if on_update is not None:
        on_update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def model_loss(model: nn.Module, compute_loss: Callable[[object, Batch], Tensor], autocast: Callable
               ) -> Callable[[Batch], Tensor]:
    """The loss of one batch through the model's own forward under autocast (the search's passes use
    search.forward_loss instead: it substitutes parameters by name, which a plain training step does not need)."""

    def loss_of(batch: Batch) -> Tensor:
        with autocast():
            outputs = model(**model_inputs(batch))
        return compute_loss(outputs, batch)

    return loss_of


@dataclass(frozen=True)
class Trained:
    """The loop's result: the number of steps, and what capturing the step cost (None: eager)."""

    steps: int
    capture: dict[str, float] | None


def train(model: nn.Module, loader: DataLoader, cfg: RetrainConfig, *,
          compute_loss: Callable[[object, Batch], Tensor], seed: int, loop: Loop,
          on_update: Callable[[int], None] | None = None) -> Trained:
    """AdamW with linear warmup and decay over all trainable parameters, resuming from `loop.checkpoint` if it
    holds a retrain state; pass p over the data is shuffled with seed + p. loop.compile_mode (engine.capture):
    off steps eagerly, graphs / inductor replay a captured step (not with on_update: AdaLoRA stays eager)."""
    checkpoint, world, device, autocast, compile_mode = (loop.checkpoint, loop.world, loop.device, loop.autocast,
                                                         loop.compile_mode)
    params = [p for p in model.parameters() if p.requires_grad]
    if compile_mode != "off" and on_update is not None:
        raise ValueError("a captured step cannot call host-side hooks (on_update): use compile_mode='off'")
    optimizer = capture.adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)
    done, saved = resume_loop(checkpoint, "retrain", model, {"w": optimizer}, schedule)
    capture.device_lr(optimizer)
    world.broadcast(params)  # one starting point everywhere
    window = LossWindow(["train_loss"], device, loop.log_every, mean=world.mean)
    window.restore(saved.get("window"))
    batches = batches_from(loader, seed, done)
    loss_of = capture.compiled(model_loss(model, compute_loss, autocast), compile_mode)
    step_fn = capture.make_step(lambda batch: train_step(model, params, optimizer, batch, cfg, compute_loss, autocast,
                                                        None, world, loss_of), compile_mode)
    model.train()
    with tqdm(total=total, initial=done, desc="retrain", unit="step", disable=not loop.progress) as bar, \
            capture.loop_stream(step_fn):
        for step in range(done + 1, total + 1):
            batch = to_device(next(batches), device)
            if on_update is None:
                loss = step_fn(batch)
            else:
                loss = train_step(model, params, optimizer, batch, cfg, compute_loss, autocast,
                                  functools.partial(on_update, step), world)
            schedule.step()
            window.add(loss)
            bar.update()
            if window.due(step, total):
                record = {"phase": "retrain", "epoch": (step - 1) // len(loader), **window.read("retrain", step),
                          "lr": capture.current_lr(optimizer)}
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
                loop.log(record, step)
            if checkpoint is not None:
                checkpoint.after_step("retrain", step, total, model, {"w": optimizer}, schedule,
                                      {"window": window.state()})
    return Trained(total, step_fn.stats.as_dict() if isinstance(step_fn, capture.CapturedStep) else None)
