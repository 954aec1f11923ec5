"""Put selectable-rank LoRA layers in place by module name, freeze the rest, split the parameters.

Every adapted matrix has one public name: the module path (``bert.encoder.layer.3.attention.self.query``)
or, for a slice of a fused projection, ``module:part`` (``transformer.h.3.attn.c_attn:q``). The same
strings key ``alpha`` in the logs, ``ranks.json`` and the peft ``rank_pattern``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from autolora.layers import WHOLE, PartSpec, SelectableLoRA, projection_shape


class RankKeyError(ValueError):
    """The ranks given do not name exactly the model's target matrices."""


class TargetError(ValueError):
    """model.targets names no projection of the model; the message lists its linear layers."""


@dataclass(frozen=True)
class TargetConfig:
    """Which projections get LoRA: peft-style name suffixes, plus the slices of a fused projection."""

    modules: tuple[str, ...] | None  # e.g. ("query", "value") or ("c_attn",); None: peft's default (models.resolve_auto)
    split: tuple[str, ...]  # equal output slices of a fused projection, e.g. ("q", "k", "v"); () if not fused
    parts: tuple[str, ...]  # the slices that get LoRA, e.g. ("q", "v"); () if not fused

    def __post_init__(self):
        if self.modules is not None and not self.modules:
            raise ValueError("model.targets.modules is empty: name at least one projection to adapt (or null: peft's default)")
        unknown = set(self.parts) - set(self.split)
        if unknown or bool(self.split) != bool(self.parts):
            raise ValueError(f"model.targets.parts {list(self.parts)} must be a non-empty subset of split {list(self.split)}")


def public_name(module_name: str, part: str) -> str:
    """The stable name of one adapted matrix."""
    return module_name if part == WHOLE else f"{module_name}:{part}"


def _matches(module_name: str, patterns: Sequence[str]) -> bool:
    # peft's list semantics: the full name, or a dotted suffix of it
    return any(module_name == p or module_name.endswith("." + p) for p in patterns)


def find_targets(model: nn.Module, targets: TargetConfig) -> dict[str, list[tuple[str, int, int]]]:
    """module path -> [(part, start, stop)] of every projection to adapt, in model order."""
    if targets.modules is None:
        raise ValueError("model.targets.modules is null: models.resolve_auto fills it in before injection")
    found: dict[str, list[tuple[str, int, int]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, SelectableLoRA) or not _matches(name, targets.modules):
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
    from transformers.pytorch_utils import Conv1D

    names = [name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)]
    return list(dict.fromkeys(names))


def target_names(model: nn.Module, targets: TargetConfig) -> list[str]:
    """Public names of all matrices the search adapts, in model order."""
    return [public_name(m, p) for m, slices in find_targets(model, targets).items() for p, _, _ in slices]


def check_rank_keys(expected: Sequence[str], ranks: Mapping[str, int]) -> None:
    """The ranks must name exactly the model's target matrices (no silent regex misses as in peft)."""
    missing = [n for n in expected if n not in ranks]
    extra = [n for n in ranks if n not in set(expected)]
    if missing or extra:
        raise RankKeyError(
            f"ranks do not match the model's target matrices: missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
            f", not in the model {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )


def inject(
    model: nn.Module,
    targets: TargetConfig,
    ranks: Mapping[str, int],
    *,
    lora_alpha: float,
    dropout: float,
    alpha_norm: str | None,
    trainable_modules: Sequence[str],
) -> None:
    """Wrap every target with ranks[name] components (0: no adapter) and freeze all but LoRA and the head.

    alpha_norm None gives plain fixed-rank LoRA; a string gives the search layer with learnable alpha.
    trainable_modules (the task head, like peft's modules_to_save) stay fully trainable.
    """
    found = find_targets(model, targets)
    check_rank_keys([public_name(m, p) for m, sl in found.items() for p, _, _ in sl], ranks)
    for param in model.parameters():
        param.requires_grad_(False)
    for module_name, slices in found.items():
        specs = [PartSpec(p, s, e, ranks[public_name(module_name, p)]) for p, s, e in slices]
        specs = [spec for spec in specs if spec.rank > 0]
        if not specs:
            continue  # rank 0 everywhere: this module keeps no adapter at all
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapper = SelectableLoRA(
            getattr(parent, child), specs, lora_alpha=lora_alpha, dropout=dropout, alpha_norm=alpha_norm
        )
        setattr(parent, child, wrapper.to(next(getattr(parent, child).parameters()).device))
    for pattern in trainable_modules:
        heads = [m for n, m in model.named_modules() if _matches(n, [pattern])]
        if not heads:
            raise ValueError(f"trainable module {pattern!r} not found in {type(model).__name__}")
        for head in heads:
            head.requires_grad_(True)
    check_adapter_ranks(model, ranks)


def adapter_ranks(model: nn.Module) -> dict[str, int]:
    """Public name -> actual number of components, read back from the injected layers."""
    return {
        public_name(name, part): rank
        for name, module in model.named_modules()
        if isinstance(module, SelectableLoRA)
        for part, rank in module.ranks().items()
    }


def check_adapter_ranks(model: nn.Module, ranks: Mapping[str, int]) -> None:
    """Raise unless every matrix carries exactly its intended rank (rank 0: no adapter)."""
    actual = adapter_ranks(model)
    wanted = {name: rank for name, rank in ranks.items() if rank > 0}
    if actual != wanted:
        diff = sorted(n for n in set(actual) | set(wanted) if actual.get(n, 0) != wanted.get(n, 0))
        raise RankKeyError(
            "adapter ranks differ from the intended ones: "
            + ", ".join(f"{n}: got {actual.get(n, 0)}, want {wanted.get(n, 0)}" for n in diff[:5])
        )


def split_params(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Trainable parameters split by name: (inner W = LoRA factors + head, outer = alpha)."""
    inner, outer = {}, {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            (outer if name.endswith(".alpha") else inner)[name] = param
    return inner, outer


def gates(model: nn.Module) -> dict[str, Tensor]:
    """Public name -> normalise(alpha), the gate the forward pass uses (search-mode layers only)."""
    return {
        public_name(name, part_name): part.gate()
        for name, module in model.named_modules()
        if isinstance(module, SelectableLoRA)
        for part_name, part in module.parts.items()
        if part.alpha is not None
    }
