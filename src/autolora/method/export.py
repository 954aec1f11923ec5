"""Our fixed-rank LoRA model -> a peft ``PeftModel`` computing the same function (saved in peft format).

A plain matrix maps one to one (lora_A = A, lora_B = B, scaling lora_alpha / r). A fused projection
with several adapted slices (GPT-2 ``c_attn`` q and v) becomes one peft adapter of rank r_q + r_v:
A stacks the parts' A, B is block-structured (each part's B in its own rows and columns, zeros
elsewhere, so the k slice stays untouched) with each part's scale folded in, and peft's scaling is 1.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from autolora.method.inject import adapter_ranks
from autolora.method.layers import SelectableLoRA
from autolora.method.ranks import module_ranks
from autolora.models.targets import WHOLE


def unwrap(model: nn.Module) -> nn.Module:
    """A deep copy of the model with every LoRA wrapper replaced by its (frozen) base projection."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, SelectableLoRA):
            if module.merged:
                raise ValueError(f"{name}: unmerge() before exporting")
            parent_name, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent_name), child, module.base)
    return plain


def peft_factors(module: SelectableLoRA) -> tuple[Tensor, Tensor]:
    """(A, B) of the equivalent single peft adapter: A (r, in), B (out, r)."""
    parts = list(module.parts.values())
    if list(module.parts) == [WHOLE]:
        return parts[0].A.detach().clone(), parts[0].B.detach().clone()
    if any(part.alpha is not None for part in parts):
        raise ValueError("only fixed-rank LoRA (no alpha) can be exported to peft")
    a = torch.cat([part.A.detach() for part in parts])  # (r_total, in)
    # (out, r_total): block structure, each part's B at its own output rows (LoRAPart.placed)
    b = torch.cat([part.placed(part.B.detach() * part.scale, module.out_features) for part in parts], dim=1)
    return a, b


@torch.no_grad()
def to_peft(model: nn.Module, lora_config) -> nn.Module:
    """A PeftModel with our LoRA weights and head; each module's peft rank is checked against ours."""
    from peft import get_peft_model

    ranks = adapter_ranks(model)
    plain = unwrap(model)
    plain.name_or_path = lora_config.base_model_name_or_path  # peft copies it into the adapter config
    peft_model = get_peft_model(plain, lora_config)
    inner = peft_model.base_model.model
    for name, module in model.named_modules():
        if not isinstance(module, SelectableLoRA):
            continue
        layer = inner.get_submodule(name)
        want = sum(module_ranks(ranks)[name].values())
        if layer.r.get("default") != want:
            raise ValueError(f"{name}: peft built rank {layer.r.get('default')}, the searched rank is {want}")
        a, b = peft_factors(module)
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    return peft_model
