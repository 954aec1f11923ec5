"""The AdaLoRA baseline (Zhang et al., ICLR 2023) through peft: SVD-form adapters whose ranks are pruned
during training down to an average `target_r` per matrix.

peft's AdaLoRA needs `update_and_allocate(step)` after every optimiser step and before `zero_grad`
(the training loop's `on_update` hook), and adds its orthogonality penalty only when the model computes
the loss itself; our tasks compute their own loss, so `orthogonality_penalty` adds the same term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autolora.typecheck import at_least, check_ranges, check_types, in_unit_interval


@dataclass(frozen=True)
class AdaLoraSettings:
    """The `adalora` config node (conf/config.yaml)."""

    init_r: int  # rank every matrix starts from
    target_r: int  # average final rank; set it to AutoLoRA's mean rank to compare at equal budget
    tinit_ratio: float  # share of steps before pruning starts
    tfinal_ratio: float  # share of steps at the end with the budget fixed
    delta_t: int  # steps between two budget allocations
    beta1: float  # EMA of the sensitivity
    beta2: float  # EMA of its uncertainty
    orth_reg_weight: float
    lr_scale: float  # AdaLoRA trains at retrain.lr x lr_scale: E starts at zero and needs a larger step

    def __post_init__(self):
        check_types(self, "adalora")
        if self.lr_scale <= 0:
            raise ValueError(f"adalora.lr_scale must be > 0, got {self.lr_scale}")
        if not 1 <= self.target_r <= self.init_r:
            raise ValueError(f"adalora.target_r must lie in [1, init_r={self.init_r}], got {self.target_r}")
        if self.tinit_ratio < 0 or self.tfinal_ratio < 0 or self.tinit_ratio + self.tfinal_ratio >= 1:
            raise ValueError("adalora.tinit_ratio + adalora.tfinal_ratio must lie in [0, 1)")
        if self.delta_t < 1:
            raise ValueError(f"adalora.delta_t must be >= 1, got {self.delta_t}")
        check_ranges([
            (at_least(self.lr_scale, 0), f"adalora.lr_scale must be finite, got {self.lr_scale}"),
            (in_unit_interval(self.beta1), f"adalora.beta1 must lie in [0, 1), got {self.beta1}"),
            (in_unit_interval(self.beta2), f"adalora.beta2 must lie in [0, 1), got {self.beta2}"),
            (at_least(self.orth_reg_weight, 0), f"adalora.orth_reg_weight must be >= 0, got {self.orth_reg_weight}"),
        ])


def wrap(model: nn.Module, patterns: Sequence[str], cfg: AdaLoraSettings, *, total_steps: int, lora_alpha: float,
         dropout: float, task_type: str, heads: Sequence[str], fan_in_fan_out: bool) -> nn.Module:
    """A peft AdaLoRA model over the target projections (a fused c_attn is adapted as a whole)."""
    from peft import AdaLoraConfig, get_peft_model

    config = AdaLoraConfig(
        init_r=cfg.init_r, target_r=cfg.target_r, lora_alpha=lora_alpha, lora_dropout=dropout,
        target_modules=list(patterns), modules_to_save=list(heads) or None, task_type=task_type,
        total_step=total_steps, tinit=math.floor(cfg.tinit_ratio * total_steps),
        tfinal=math.floor(cfg.tfinal_ratio * total_steps), deltaT=cfg.delta_t, beta1=cfg.beta1, beta2=cfg.beta2,
        orth_reg_weight=cfg.orth_reg_weight, fan_in_fan_out=fan_in_fan_out,
    )
    return get_peft_model(model, config)


def orthogonality_penalty(peft_model: nn.Module) -> Tensor:
    """Mean over adapters of ||P Pᵀ - I||_F (P = lora_A) and ||Pᵀ P - I||_F (P = lora_B), as peft adds it."""
    terms = []
    for name, param in peft_model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and param.requires_grad and param.numel():
            gram = param @ param.T if "lora_A" in name else param.T @ param
            terms.append(torch.linalg.matrix_norm(
                gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)))
    return torch.stack(terms).mean()


def final_ranks(peft_model: nn.Module) -> dict[str, int]:
    """Module path -> number of singular values AdaLoRA kept (non-zero entries of lora_E)."""
    from peft.tuners.adalora import AdaLoraLayer

    inner = peft_model.base_model.model
    return {name: int(torch.count_nonzero(module.lora_E["default"]).item())
            for name, module in inner.named_modules()
            if isinstance(module, AdaLoraLayer) and "default" in module.lora_E}
