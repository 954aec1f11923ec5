"""Backbone settings at run time: frozen weights stored in bf16 under bf16 autocast, and the 4D attention
masks that spare transformers a host sync per forward pass."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def store_frozen_linears_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Keep the frozen weights and biases of every nn.Linear / GPT-2 Conv1D in `dtype`; returns how many changed.

    Under bf16 autocast a matmul casts its fp32 weight to bf16 on every forward pass (autocast caches the casts
    of trainable weights only) and keeps that copy alive for the backward, beside the fp32 original. Storing
    the frozen weights in bf16 once gives the matmuls the same bf16 values (tests/test_models.py checks bit
    equality) without the copies: the second-order step's peak memory fell by 24% at roberta-base 16x128; its
    wall time moved within noise (results/bench_history/bench_frozen_ab.json). Trainable tensors (LoRA factors,
    alpha, heads) stay fp32 for the optimiser; a weight shared with an embedding (a tied LM head) is skipped, since
    lookups are not autocast.
    Call it with torch.float32 before saving weights, so that files hold the dtype the model was loaded in.
    """
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    changed = 0
    for module in model.modules():
        if not isinstance(module, (nn.Linear, Conv1D)):
            continue
        for tensor in (module.weight, module.bias):
            if tensor is None or tensor.requires_grad or id(tensor) in tied or tensor.dtype == dtype:
                continue
            tensor.data = tensor.data.to(dtype)
            changed += 1
    return changed


def four_d_attention_mask(mask: torch.Tensor, *, causal: bool, attn_implementation: str) -> torch.Tensor:
    """A (B, T) padding mask as the 4D mask transformers uses as-is: (B, 1, 1, T), or (B, 1, T, T) if causal.

    Why: given a 2D mask, transformers' SDPA path asks ``mask.all()`` to decide whether it can drop the
    mask: a host-device sync in every forward pass. A ready 4D mask skips that. Boolean (True = attend)
    for SDPA, additive float (0 or the float32 minimum) for eager attention. Batches must be right-padded
    when causal, so that no query row is fully masked.
    """
    keep = mask.bool()[:, None, None, :]  # (B, 1, 1, T)
    if causal:
        length = mask.shape[-1]
        keep = keep & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # (B, 1, T, T)
    if attn_implementation == "sdpa":
        return keep
    if attn_implementation == "eager":
        return torch.zeros(keep.shape, dtype=torch.float32, device=mask.device).masked_fill(
            ~keep, torch.finfo(torch.float32).min)
    raise ValueError(f"4D masks are built for sdpa and eager attention, not {attn_implementation!r}")
