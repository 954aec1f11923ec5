"""Put selectable-rank LoRA layers in place by module name, freeze the rest, split the parameters.

Which projections are targets, and their public names, is models/targets.py's; this module wraps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from autolora.errors import RankKeyError
from autolora.method.layers import GateGroup, PartSpec, SelectableLoRA
from autolora.models.targets import TargetConfig, find_targets, matches, public_name


def check_rank_keys(expected: Sequence[str], ranks: Mapping[str, int]) -> None:
    """The ranks must name exactly the model's target matrices (no silent regex misses as in peft)."""
    missing = [n for n in expected if n not in ranks]
    extra = [n for n in ranks if n not in set(expected)]
    if missing or extra:
        shown = lambda names: f"{names[:3]}{'...' if len(names) > 3 else ''}"  # noqa: E731
        found = [f"missing {shown(missing)}" if missing else "", f"not in the model {shown(extra)}" if extra else ""]
        raise RankKeyError(f"ranks do not match the model's target matrices: {', '.join(filter(None, found))}")


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
        specs = [PartSpec(p, s, e, ranks[public_name(module_name, p)], targets.groups) for p, s, e in slices]
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
        heads = [m for n, m in model.named_modules() if matches(n, [pattern])]
        if not heads:
            raise ValueError(f"trainable module {pattern!r} not found in {type(model).__name__}")
        for head in heads:
            head.requires_grad_(True)
    if alpha_norm == "global_softmax":
        couple_gates(model)
    check_adapter_ranks(model, ranks)


def couple_gates(model: nn.Module) -> None:
    """Put every search part of the model into one GateGroup (one softmax across all matrices)."""
    parts = [part for module in model.modules() if isinstance(module, SelectableLoRA)
             for part in module.parts.values() if part.alpha is not None]
    group = GateGroup(parts)
    for part in parts:
        part.group = group


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


def raw_alphas(model: nn.Module) -> dict[str, Tensor]:
    """Public name -> the learnable alpha itself, before normalise (the released code's rank readout uses it)."""
    return {
        public_name(name, part_name): part.alpha
        for name, module in model.named_modules()
        if isinstance(module, SelectableLoRA)
        for part_name, part in module.parts.items()
        if part.alpha is not None
    }


def gates(model: nn.Module) -> dict[str, Tensor]:
    """Public name -> normalise(alpha), the gate the forward pass uses (search-mode layers only)."""
    return {
        public_name(name, part_name): part.gate()
        for name, module in model.named_modules()
        if isinstance(module, SelectableLoRA)
        for part_name, part in module.parts.items()
        if part.alpha is not None
    }


@torch.no_grad()
def update_spectra(model: nn.Module) -> dict[str, tuple[list[float], int]]:
    """Public name -> (the singular values of the learned update ΔW = scale · B diag(gate) A, largest first, the
    first `components` of them (ΔW has rank <= components); what one component costs in parameters, in + out),
    the input of the ΔW readouts (method.readout)."""
    spectra = {}
    for name, module in model.named_modules():
        if isinstance(module, SelectableLoRA):
            for part_name, part in module.parts.items():
                values = torch.linalg.svdvals(part.delta_weight().double())[: part.rank]  # (components,)
                spectra[public_name(name, part_name)] = (values.tolist(), part.A.shape[1] + part.B.shape[0])
    return spectra
