"""Fixed-rank LoRA fine-tuning: the retrain at the searched ranks and the uniform-rank baseline."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from autolora.batch import Batch, model_inputs, to_device


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
        if self.epochs < 1:
            raise ValueError(f"retrain.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"retrain.batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"retrain.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")


def train(
    model: nn.Module,
    loader: Iterable[Batch],
    cfg: RetrainConfig,
    *,
    compute_loss: Callable[[object, Batch], Tensor],
    autocast: Callable,
    device: torch.device,
    log: Callable[[dict, int], None],
    log_every: int,
    progress: bool = True,
) -> int:
    """AdamW with linear warmup and decay over all trainable parameters; returns the number of steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)
    running = torch.zeros((), device=device)
    model.train()
    step = 0
    with tqdm(total=total, desc="retrain", unit="step", disable=not progress) as bar:
        for epoch in range(cfg.epochs):
            for batch in loader:
                batch = to_device(batch, device)
                with autocast():
                    outputs = model(**model_inputs(batch))
                loss = compute_loss(outputs, batch)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                running += loss.detach().float()
                step += 1
                bar.update()
                if step % log_every == 0 or step == total:
                    mean = float(running) / (log_every if step % log_every == 0 else step % log_every)
                    running.zero_()
                    bar.set_postfix(loss=f"{mean:.4f}")
                    log({"phase": "retrain", "epoch": epoch, "train_loss": mean, "lr": schedule.get_last_lr()[0]}, step)
    return step
