"""The methods a run can use, by name (`method=...`): which config groups each one reads, and where its ranks
come from. runner/phases.py maps every name to the phases that run it; analysis/ groups finished runs by the
groups a method reads (a LoRA run holds search.* keys it never read)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One method: its name in the config and the config groups, besides the shared ones, its result depends on."""

    name: str
    reads: tuple[str, ...]  # method-specific config groups it reads (search, lora, adalora, eva)
    searches: bool  # runs the AutoLoRA search (or retrains at search.ranks_file)


METHODS: dict[str, Method] = {
    "autolora": Method("autolora", reads=("search",), searches=True),  # search, threshold, retrain
    "lora": Method("lora", reads=("lora",), searches=False),  # uniform rank lora.r
    "adalora": Method("adalora", reads=("adalora",), searches=False),  # peft's AdaLoRA, pruned while training
    "eva": Method("eva", reads=("eva",), searches=False),  # peft's EVA: ranks and A from activations' SVD
}
METHOD_GROUPS = tuple(dict.fromkeys(group for method in METHODS.values() for group in method.reads))


def unread_groups(name: str) -> tuple[str, ...]:
    """The method-specific config groups that method `name` never reads (for an unknown name: none)."""
    method = METHODS.get(name)
    return () if method is None else tuple(g for g in METHOD_GROUPS if g not in method.reads)
