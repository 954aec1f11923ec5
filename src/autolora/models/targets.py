"""Which projections of a backbone get LoRA, and the public name of every adapted matrix.

Every adapted matrix has one public name: the module path (``bert.encoder.layer.3.attention.self.query``)
or, for a slice of a fused projection, ``module:part`` (``transformer.h.3.attn.c_attn:q``). The same
strings key ``alpha`` in the logs, ``ranks.json`` and the peft ``rank_pattern``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

from autolora.errors import TargetError

WHOLE = "all"  # part name of an adapter that covers the full output of its module


def projection_shape(base: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight stored (in, out))."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, Conv1D):
        in_features, out_features = base.weight.shape
        return in_features, out_features
    raise TypeError(f"LoRA wraps nn.Linear or transformers Conv1D, not {type(base).__name__}")


@dataclass(frozen=True)
class TargetConfig:
    """Which projections get LoRA: peft-style name suffixes, plus the slices of a fused projection."""

    # e.g. ("query", "value") or ("c_attn",); None: found from the architecture (backbone.resolve_auto)
    modules: tuple[str, ...] | None
    split: tuple[str, ...]  # equal output slices of a fused projection, e.g. ("q", "k", "v"); () if not fused
    parts: tuple[str, ...]  # the slices that get LoRA, e.g. ("q", "v"); () if not fused

    def __post_init__(self):
        if self.modules is not None and not self.modules:
            raise ValueError("model.targets.modules is empty: name at least one projection to adapt "
                             "(or null: peft's default)")
        unknown = set(self.parts) - set(self.split)
        if unknown or bool(self.split) != bool(self.parts):
            raise ValueError(f"model.targets.parts {list(self.parts)} must be a non-empty subset of split "
                             f"{list(self.split)}")


def public_name(module_name: str, part: str) -> str:
    """The stable name of one adapted matrix."""
    return module_name if part == WHOLE else f"{module_name}:{part}"


def matches(module_name: str, patterns: Sequence[str]) -> bool:
    # peft's list semantics: the full name, or a dotted suffix of it
    return any(module_name == p or module_name.endswith("." + p) for p in patterns)


def find_targets(model: nn.Module, targets: TargetConfig) -> dict[str, list[tuple[str, int, int]]]:
    """module path -> [(part, start, stop)] of every projection to adapt, in model order."""
    if targets.modules is None:
        raise ValueError("model.targets.modules is null: models.backbone.resolve_auto fills it in before injection")
    found: dict[str, list[tuple[str, int, int]]] = {}
    for name, module in model.named_modules():
        # an injected adapter (method.layers.SelectableLoRA) sits where its projection was: not a target again
        if getattr(module, "is_lora_wrapper", False) or not matches(name, targets.modules):
            continue
        _, out_features = projection_shape(module)  # raises on an unsupported module type
        if not targets.split:
            found[name] = [(WHOLE, 0, out_features)]
            continue
        if out_features % len(targets.split):
            raise ValueError(f"{name}: {out_features} outputs do not split into {list(targets.split)}")
        width = out_features // len(targets.split)
        found[name] = [(p, i * width, (i + 1) * width) for i, p in enumerate(targets.split) if p in targets.parts]
    if not found:
        raise TargetError(f"no module of {type(model).__name__} matches model.targets.modules={list(targets.modules)}; "
                          f"its linear layers: {', '.join(linear_layers(model))}")
    return found


def linear_layers(model: nn.Module) -> list[str]:
    """The distinct last names of the model's linear projections (what model.targets.modules can name)."""
    names = [name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)]
    return list(dict.fromkeys(names))


def target_names(model: nn.Module, targets: TargetConfig) -> list[str]:
    """Public names of all matrices the search adapts, in model order."""
    return [public_name(m, p) for m, slices in find_targets(model, targets).items() for p, _, _ in slices]
