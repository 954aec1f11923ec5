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


def cache_position_bias(model: nn.Module) -> int:
    """MPNet's relative-position bias computed once per sequence length; returns how many encoders it wraps.

    Why: MPNet in transformers before 5.18 builds the bias's buckets with torch.arange on the CPU and copies them
    to the GPU in every forward pass (modeling_mpnet.MPNetEncoder.compute_position_bias), and CUDA graph capture
    refuses a host-to-device copy (the 2026-12-07 H100 traceback). The bias depends on nothing but the
    length and the relative_attention_bias table, which stays frozen: each encoder keeps the original's own
    result for one row per (length, table) and expands it to the batch, as the original does, so the values are
    the original's bit for bit. A shape's first step runs eagerly (engine/capture.py), which fills the cache
    before capture. The original runs as it is where its result may differ or may not be kept: explicit
    position ids, a table that trains, inference mode (an inference tensor cannot join a later training step).
    """
    wrapped = 0
    for module in model.modules():
        if type(module).__name__ == "MPNetEncoder" and isinstance(getattr(module, "relative_attention_bias", None),
                                                                  nn.Embedding):
            module.compute_position_bias = _PositionBiasCache(module.compute_position_bias,
                                                              module.relative_attention_bias)
            wrapped += 1
    return wrapped


class _PositionBiasCache:
    """compute_position_bias(x, position_ids=None, num_buckets=32) with the one-row results kept per length."""

    def __init__(self, original, bias: nn.Embedding):
        self.original, self.bias, self.kept, self.kept_for = original, bias, {}, None

    @torch.compiler.disable  # plain Python around a lookup (data_ptr, dict keys): dynamo would break here anyway
    def __call__(self, x: torch.Tensor, position_ids: torch.Tensor | None = None, num_buckets: int = 32):
        table = self.bias.weight  # looked up per call: .to() and load_state_dict may swap the tensor
        if position_ids is not None or table.requires_grad or torch.is_inference_mode_enabled():
            return self.original(x, position_ids, num_buckets)
        version = (table.data_ptr(), table._version, table.dtype, table.device)
        if version != self.kept_for:  # the table was moved, cast or written to: what was kept is stale
            self.kept, self.kept_for = {}, version
        key = (x.shape[1], x.device, num_buckets)
        if key not in self.kept:
            with torch.no_grad():
                self.kept[key] = self.original(x[:1], None, num_buckets)
        one = self.kept[key]
        return one.expand((x.shape[0], *one.shape[1:])).contiguous()
