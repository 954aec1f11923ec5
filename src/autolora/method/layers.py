"""Selectable-rank LoRA: a frozen base projection plus K rank-1 components per output *part*.

docs/method.md §1: h = W x + s · Σ_j g_j · B[:, j] A[j, :] x, with the gate g = normalise(alpha) during the
search and g = 1 for plain (fixed-rank) LoRA. A fused projection (GPT-2's ``c_attn``) holds one
part per adapted slice (``q``, ``v``); the untouched slices (``k``) pass through bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from autolora.models.targets import projection_shape

ALPHA_NORMS = ("softmax", "none", "sigmoid", "global_softmax", "sparsemax")


def sparsemax(z: Tensor) -> Tensor:
    """The Euclidean projection of z onto the simplex (Martins & Astudillo 2016), along the last dimension:
    max(z - tau, 0) with tau such that the result sums to one. Autograd through the sort and cumulative sum
    gives its Jacobian (identity minus 1/|support| inside the support, 0 outside). No host sync: capturable."""
    ordered = torch.sort(z, dim=-1, descending=True).values
    count = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumulative = ordered.cumsum(dim=-1)
    support = (1 + count * ordered > cumulative).sum(dim=-1, keepdim=True)  # >= 1: the largest is always in
    tau = (cumulative.gather(-1, support - 1) - 1) / support.to(z.dtype)
    return torch.clamp(z - tau, min=0)


def normalise(alpha: Tensor, alpha_norm: str) -> Tensor:
    """The gate the forward pass multiplies each rank-1 component by (docs/method.md §1, ablations §5).

    global_softmax couples matrices (GateGroup); on one matrix's alpha alone it is that matrix's softmax.
    sparsemax (issue #27's sharper normalisation): on the simplex like softmax, but its gates move as far as
    alpha does (softmax's near 1/k move 1/k as far) and can reach exactly 0, after which that component gets
    no gradient."""
    if alpha_norm in ("softmax", "global_softmax"):  # the paper: alpha on the simplex
        return torch.softmax(alpha, dim=-1)
    if alpha_norm == "sparsemax":
        return sparsemax(alpha)
    if alpha_norm == "sigmoid":  # ablation: element-wise gate in (0, 1)
        return torch.sigmoid(alpha)
    if alpha_norm == "none":  # ablation: unconstrained
        return alpha
    raise ValueError(f"alpha_norm must be one of {ALPHA_NORMS}, got {alpha_norm!r}")


def initial_alpha(k: int, alpha_norm: str) -> Tensor:
    """Raw alpha such that the gate starts neutral: uniform 1/k (softmax, sparsemax, none) or 0.5 (sigmoid)."""
    if alpha_norm == "none":
        return torch.full((k,), 1.0 / k)
    if alpha_norm in ("softmax", "sigmoid", "global_softmax", "sparsemax"):
        return torch.zeros(k)
    raise ValueError(f"alpha_norm must be one of {ALPHA_NORMS}, got {alpha_norm!r}")


class GateGroup:
    """One softmax across every component of several parts (search.alpha_norm=global_softmax, issue #31).

    gate of part p = M · softmax(concat of the M parts' alpha)[p's slice]: the gates of all matrices share one
    budget of M, so a matrix can lose all of it (every gate under 1/k: rank 0) while the mean gate stays 1/k, the
    per-matrix softmax's, and with it the update's scale at the start. A plain object, not a Module: it holds the
    parts without registering them twice, and reads each part's `alpha` attribute at call time, so that
    torch.func.functional_call's substituted alpha (the hypergradient's) is what it normalises.
    """

    def __init__(self, parts: Sequence[LoRAPart]):
        self.parts = list(parts)
        starts = [0]
        for p in self.parts:
            starts.append(starts[-1] + p.rank)
        # part -> its gates' slice of the group's softmax; starts is one longer than the parts
        self.slices = {id(p): slice(a, b) for p, a, b in zip(self.parts, starts, starts[1:], strict=False)}

    def gate(self, part: LoRAPart) -> Tensor:
        # Each part's call normalises the whole group again (M softmaxes of sum-of-k elements per forward pass)
        # instead of reusing one: a reused result would have to know whether the alphas it came from are still the
        # ones in use (functional_call substitutes them, the optimiser steps them in place, grad mode may differ),
        # and in the captured steps, the default, the M small kernels are replayed or fused, not launched by Python.
        gates = torch.softmax(torch.cat([p.alpha for p in self.parts]), dim=0) * len(self.parts)  # mean 1/k each
        return gates[self.slices[id(part)]]


@dataclass(frozen=True)
class PartSpec:
    """One adapted output slice ``[start, stop)`` of a projection, with its number of components; with
    groups > 1 the slice lies at ``[start, stop)`` of each of that many equal output blocks (one per head)."""

    name: str
    start: int
    stop: int
    rank: int
    groups: int = 1

    def runs(self, out_features: int) -> list[tuple[int, int, int]]:
        """(first row, end row, first row of B) of each contiguous run of output rows this part adapts."""
        block, width = out_features // self.groups, self.stop - self.start
        return [(g * block + self.start, g * block + self.stop, g * width) for g in range(self.groups)]


class LoRAPart(nn.Module):
    """K rank-1 components for one output slice: delta(x) = scale · (x Aᵀ ⊙ g) Bᵀ."""

    def __init__(self, spec: PartSpec, in_features: int, out_features: int, scale: float, alpha_norm: str | None):
        super().__init__()
        self.scale, self.alpha_norm = scale, alpha_norm
        self.runs = spec.runs(out_features)  # [(first row, end row, first row of B)] in the projection's output
        self.A = nn.Parameter(torch.empty(spec.rank, in_features))  # (K, in)
        self.B = nn.Parameter(torch.zeros(spec.groups * (spec.stop - spec.start), spec.rank))  # (out_part, K)
        nn.init.kaiming_uniform_(self.A, a=5**0.5)  # as peft/LoRA: A random, B zero, so delta = 0 at init
        self.alpha = None if alpha_norm is None else nn.Parameter(initial_alpha(spec.rank, alpha_norm))
        self.group: GateGroup | None = None  # global_softmax: set by inject.couple_gates; alone, its own softmax

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def gate(self) -> Tensor | None:
        """normalise(alpha), or None for plain LoRA (all gates one); the group's share under global_softmax."""
        if self.alpha is None:
            return None
        if self.group is not None:
            return self.group.gate(self)
        return normalise(self.alpha, self.alpha_norm)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.linear(x, self.A)  # (..., K): never materialises the (out, in) update
        gate = self.gate()
        if gate is None:
            return F.linear(hidden, self.B) * self.scale
        return F.linear(hidden * (gate * self.scale).to(hidden.dtype), self.B)

    def column_scale(self) -> Tensor:
        """Per component, what its rank-1 update is multiplied by: scale · g (g = 1 for plain LoRA), shape (K,)."""
        gate = self.gate()
        return self.A.new_full((self.rank,), self.scale) if gate is None else gate * self.scale

    def delta_weight(self) -> Tensor:
        """The dense update scale · B diag(g) A, shape (out_part, in); used by merge() and tests only."""
        return (self.B * self.column_scale()) @ self.A  # scales B's columns

    def placed(self, b: Tensor, out_features: int) -> Tensor:
        """b (out_part, R) with zero rows around it so that its rows sit at this part's output rows: (out, R).
        Out of place (pads and a concatenation): autograd still needs b."""
        pieces, row = [], 0
        for first, end, offset in self.runs:
            pieces += [b.new_zeros(first - row, b.shape[1]), b[offset : offset + end - first]]
            row = end
        return torch.cat([*pieces, b.new_zeros(out_features - row, b.shape[1])])


class SelectableLoRA(nn.Module):
    """A frozen projection plus one ``LoRAPart`` per adapted slice; ``base`` runs unchanged."""

    is_lora_wrapper = True  # models.targets.find_targets passes over it (it holds a target, it is not one)

    def __init__(
        self,
        base: nn.Module,
        parts: Sequence[PartSpec],
        *,
        lora_alpha: float,
        dropout: float,
        alpha_norm: str | None,
    ):
        """alpha_norm None builds plain LoRA (scale lora_alpha / rank); otherwise search mode."""
        super().__init__()
        in_features, out_features = projection_shape(base)
        ordered = sorted(parts, key=lambda p: p.start)
        for i, spec in enumerate(ordered):
            block = out_features // spec.groups if spec.groups >= 1 and out_features % spec.groups == 0 else 0
            if not 0 <= spec.start < spec.stop <= block or spec.rank < 1:
                raise ValueError(f"bad LoRA part {spec} for a projection with {out_features} outputs")
            if i and spec.groups != ordered[i - 1].groups:
                raise ValueError(f"LoRA parts {ordered[i - 1].name!r} and {spec.name!r} split the output differently")
            if i and spec.start < ordered[i - 1].stop:
                raise ValueError(f"LoRA parts {ordered[i - 1].name!r} and {spec.name!r} overlap")
        self.base = base
        self.in_features, self.out_features = in_features, out_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.parts = nn.ModuleDict(
            {spec.name: LoRAPart(spec, in_features, out_features, lora_alpha / spec.rank, alpha_norm)
             for spec in ordered}
        )
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:
            return out
        x = self.dropout(x)
        parts = list(self.parts.values())
        if len(parts) == 1 and parts[0].B.shape[0] == self.out_features:
            return out + parts[0](x).to(out.dtype)
        # Several parts (GPT-2's fused c_attn: q and v), or one part of the output: one adapter over the
        # whole projection, as peft has, instead of one per part plus a concatenation of the (.., out)
        # output (results/bench_history/bench_2026-12-01.md: 1.6x the GEMM calls and a full extra copy of the
        # output). A stacks the parts' components; B is block-structured, zero outside each part's rows, so
        # untouched slices get + 0.
        hidden = F.linear(x, torch.cat([part.A for part in parts]))  # (..., R), R = sum of the parts' ranks
        column_scale = torch.cat([part.column_scale() for part in parts])  # (R,): scale, or gate * scale
        block_b = torch.cat([part.placed(part.B, self.out_features) for part in parts], dim=1)  # (out, R)
        return out + F.linear(hidden * column_scale.to(hidden.dtype), block_b).to(out.dtype)

    def ranks(self) -> dict[str, int]:
        """Actual number of components per part, read off the parameters."""
        return {name: part.rank for name, part in self.parts.items()}

    @torch.no_grad()
    def _add_deltas(self, sign: float) -> None:
        weight = self.base.weight
        for part in self.parts.values():
            delta = part.delta_weight().to(weight.dtype) * sign  # (out_part, in)
            for first, end, offset in part.runs:
                rows = delta[offset : offset + end - first]
                if isinstance(self.base, Conv1D):  # Conv1D stores (in, out): the one place layout matters
                    weight[:, first:end] += rows.T
                else:
                    weight[first:end, :] += rows

    def merge(self) -> None:
        """Fold the update into the base weight (inference); forward then runs the base alone."""
        if not self.merged:
            self._add_deltas(+1.0)
            self.merged = True

    def unmerge(self) -> None:
        """Undo merge() (up to rounding) so the adapter trains again."""
        if self.merged:
            self._add_deltas(-1.0)
            self.merged = False
