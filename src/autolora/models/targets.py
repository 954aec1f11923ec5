"""Which projections of a backbone get LoRA, and the public name of every adapted matrix.

Every adapted matrix has one public name: the module path (``bert.encoder.layer.3.attention.self.query``)
or, for a slice of a fused projection, ``module:part`` (``transformer.h.3.attn.c_attn:q``). The same
strings key ``alpha`` in the logs, ``ranks.json`` and the peft ``rank_pattern``.

With ``model.targets.modules`` null the targets are found from the model's structure (`attention_targets`):
the paper's choice, the query and value projections of every attention block, whatever the architecture
calls them; a fused query/key/value projection gets its q and v slices.
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

    # e.g. ("query", "value") or ("c_attn",); None: found from the architecture (attention_targets)
    modules: tuple[str, ...] | None
    split: tuple[str, ...]  # equal output slices of a fused projection, e.g. ("q", "k", "v"); () if not fused
    parts: tuple[str, ...]  # the slices that get LoRA, e.g. ("q", "v"); () if not fused
    # the split repeats in this many equal output blocks: 1 for [q | k | v] (GPT-2's c_attn), the number of
    # heads where every head holds its own [q | k | v] (GPT-NeoX's query_key_value)
    groups: int = 1
    found: bool = False  # True: attention_targets chose them from the architecture (said in the summary)

    def __post_init__(self):
        if self.modules is not None and not self.modules:
            raise ValueError("model.targets.modules is empty: name at least one projection to adapt "
                             "(or null: the attention blocks' query and value projections)")
        if self.groups < 1:
            raise ValueError(f"model.targets.groups must be >= 1, got {self.groups}")
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
        if out_features % (len(targets.split) * targets.groups):
            raise ValueError(f"{name}: {out_features} outputs do not split into {list(targets.split)}"
                             + (f" in each of {targets.groups} groups" if targets.groups > 1 else ""))
        width = out_features // targets.groups // len(targets.split)  # one slice within one group
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


def target_widths(model: nn.Module, targets: TargetConfig) -> dict[str, int]:
    """Public name -> the most rank-1 components that can be independent in that matrix: min(in, out) of its
    part (a fused slice spans `groups` blocks of stop - start outputs). A rank above it only adds copies."""
    widths = {}
    for module_name, slices in find_targets(model, targets).items():
        in_features, _ = projection_shape(model.get_submodule(module_name))
        for part, start, stop in slices:
            outputs = stop - start if part == WHOLE else (stop - start) * targets.groups
            widths[public_name(module_name, part)] = min(in_features, outputs)
    return widths


# An attention block: a module whose own linear children include a query, a key and a value projection,
# named by role as the architectures name them (BERT query, DistilBERT q_lin, MPNet q, DeBERTa query_proj,
# Llama q_proj, ...). Or one fused projection computing all three, listed here with its output layout.
QUERY = ("query", "q", "q_proj", "q_lin", "query_proj", "wq")
KEY = ("key", "k", "k_proj", "k_lin", "key_proj", "wk")
VALUE = ("value", "v", "v_proj", "v_lin", "value_proj", "wv")
PER_HEAD, CONTIGUOUS = "per head", "contiguous"
FUSED = {"c_attn": CONTIGUOUS, "Wqkv": CONTIGUOUS, "qkv_proj": CONTIGUOUS, "qkv": CONTIGUOUS,
         "query_key_value": PER_HEAD}  # GPT-NeoX, Bloom, Falcon: view(..., heads, 3 * head_size)


def attention_targets(model: nn.Module, heads: int | None) -> TargetConfig:
    """The query and value projections of every attention block of `model` (built on the meta device will do):
    separate projections by name suffix (or by full path where the suffix would catch more), fused ones as
    their q and v slices. heads: the config's number of attention heads (for a per-head fused layout).
    TargetError, listing the linear layers, where the model has no attention block."""
    separate, fused = [], {}  # paths of the q and v projections; path of a fused projection -> its layout
    for name, module in model.named_modules():
        children = {child for child, m in module.named_children() if isinstance(m, nn.Linear | Conv1D)}
        path = f"{name}." if name else ""
        roles = [next((c for c in names if c in children), None) for names in (QUERY, KEY, VALUE)]
        if all(roles):
            separate += [path + roles[0], path + roles[2]]
        for child in sorted(children & set(FUSED)):
            in_features, out_features = projection_shape(module.get_submodule(child))
            if out_features == 3 * in_features:  # q, k and v as wide as the input: equal thirds (no grouped KV)
                fused[path + child] = FUSED[child]
    where = f"{type(model).__name__}: its linear layers: {', '.join(linear_layers(model))}"
    if not separate and not fused:
        raise TargetError(f"model.targets.modules: found no attention block (query, key and value projections) "
                          f"in {where}; name the projections to adapt: model.targets.modules=[...]")
    if (separate and fused) or len(set(fused.values())) > 1:
        raise TargetError(f"model.targets.modules: attention blocks of different layouts in {where}; name the "
                          "projections to adapt: model.targets.modules=[...] (with model.targets.split/parts)")
    paths = separate or list(fused)
    suffixes = tuple(dict.fromkeys(p.rpartition(".")[2] for p in paths))
    caught = [n for n, m in model.named_modules() if matches(n, suffixes) and isinstance(m, nn.Linear | Conv1D)]
    modules = suffixes if sorted(caught) == sorted(paths) else tuple(paths)
    if separate:
        return TargetConfig(modules, (), (), found=True)
    per_head = next(iter(fused.values())) == PER_HEAD
    if per_head and not heads:
        raise TargetError(f"model.targets.modules: {paths[0]} holds q, k and v per head, and the model config "
                          "names no num_attention_heads; name the projections to adapt: model.targets.modules=[...]")
    return TargetConfig(modules, ("q", "k", "v"), ("q", "v"), groups=heads if per_head else 1, found=True)


def describe(targets: TargetConfig) -> dict:
    """The targets as metrics.json and ranks.json record them (and the summary prints them)."""
    matrices = [f"{m}:{p}" for m in targets.modules for p in targets.parts] if targets.split else list(targets.modules)
    return {"matrices": matrices, "modules": list(targets.modules), "split": list(targets.split),
            "parts": list(targets.parts), "groups": targets.groups,
            "from": "architecture" if targets.found else "model.targets"}
