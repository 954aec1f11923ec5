"""Rank selection (docs/method.md §3): threshold the gates the forward pass uses, save/load, export to peft.

The only way ranks travel from the search to the retrain is ``ranks.json`` (or the same mapping in
memory within one run). Unlike the released code, we threshold exactly ``normalise(alpha)``, the
gate of the forward pass, not the raw vector divided by its sum.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autolora.errors import RanksFileError
from autolora.files import read_text, write_json
from autolora.layout import ALPHA, RANKS
from autolora.method import noise_test

# Gates are float32 on the device; a gate equal to the threshold up to float32 rounding (1/3 as
# float32 vs 1/3 as float64, say) counts as reaching it.
TIE_TOLERANCE = 1e-6
FORMAT_VERSION = 1


def default_threshold(k: int, alpha_norm: str) -> float:
    """1/k on the simplex (the paper; global_softmax's and sparsemax's mean gate is 1/k too); 0.5 for the sigmoid
    ablation."""
    return 0.5 if alpha_norm == "sigmoid" else 1.0 / k


def undecided(values: Sequence[float], level: float) -> bool:
    """Every value equal to `level` up to float32 rounding: gates (or alpha) that never left their start."""
    return all(abs(float(v) - level) <= TIE_TOLERANCE * max(1.0, abs(level)) for v in values)


def select_ranks(gates: Mapping[str, Sequence[float]], threshold: float, min_rank: int = 0) -> dict[str, int]:
    """rank_l = #{j : gate_l^j >= threshold}, raised to min_rank; rank 0 means the matrix gets no LoRA.

    A matrix whose every gate sits at the threshold (the start: alpha never moved) is undecided and gets
    min_rank, not k: the paper's >= would keep all of its components on no evidence."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    ranks = {}
    for name, gate in gates.items():
        kept = sum(1 for g in gate if float(g) >= threshold * (1.0 - TIE_TOLERANCE))
        ranks[name] = min_rank if undecided(gate, threshold) else min(len(gate), max(kept, min_rank))
    return ranks


def select_ranks_released(alphas: Mapping[str, Sequence[float]], min_rank: int = 0) -> dict[str, int]:
    """The released code's readout: rank_l = #{j : alpha_l^j / sum_j alpha_l^j >= 1/k} on the raw alpha, read
    as alpha_l^j >= mean(alpha_l) (the same for sum > 0, the released initialisation; like softmax it does not
    move when every alpha shifts by a constant, which the softmax gradient never changes). At least one
    component always reaches the mean, so no matrix gets rank 0 unless min_rank says so; a matrix whose alpha
    are all equal (the start) is undecided and gets min_rank (where the released code would keep all k)."""
    ranks = {}
    for name, alpha in alphas.items():
        values = [float(a) for a in alpha]
        mean = sum(values) / len(values)
        kept = sum(1 for a in values if a >= mean - TIE_TOLERANCE * max(1.0, abs(mean)))
        ranks[name] = min_rank if undecided(values, mean) else min(len(values), max(kept, min_rank))
    return ranks


# A search that did not separate the components. Under bf16 autocast (the GPU default) the forward pass
# multiplies by the gate rounded to bf16 (layers.py casts gate * scale to the activation dtype). bf16 keeps 8
# significant bits: just below a power of two such as 1/8 its step is 2^-8 of the value, above it 2^-7; every
# gate within 2^-9 * threshold of the threshold rounds to the threshold itself. A matrix whose gates all lie
# within NOISE_BOUND * threshold of the threshold is therefore at most one bf16 step from uniform: the loss
# the search optimised could not tell its components apart, and which side of the threshold each lands on
# (its rank) is decided by rounding, not by the data. The same bound holds for fp32 runs: it is also about
# four AdamW steps (each moves a softmax gate by ~ threshold * alpha_lr, alpha_lr = 1e-3) of consistent
# movement. A 2-step search leaves gates within 1e-7 of 1/k; the committed GLUE searches reach 4e-3 and more.
NOISE_BOUND = 2.0**-8  # relative to the threshold: 4.9e-4 at 1/8


def gate_spread(gate: Sequence[float]) -> float:
    """max - min of one matrix's gates (0 = undecided, uniform)."""
    return float(max(gate)) - float(min(gate))


def gate_entropy(gate: Sequence[float]) -> float:
    """Entropy (nats) of the gates clamped at 0 and normalised to sum one: log k = uniform, 0 = one component."""
    clamped = [max(float(g), 0.0) for g in gate]
    total = sum(clamped)
    if total == 0:
        return 0.0
    return -sum(p / total * math.log(p / total) for p in clamped if p > 0)


def gate_offset(gate: Sequence[float], threshold: float) -> float:
    """max_j |gate_j - threshold|: how far the most decided component got from the threshold. For softmax
    gates (mean 1/k = threshold) it lies between spread / 2 and spread; unlike the spread it also sees
    sigmoid gates that moved together."""
    return max(abs(float(g) - threshold) for g in gate)


def search_diagnostics(gates: Mapping[str, Sequence[float]], threshold: float,
                       noise: Mapping[str, Any]) -> dict[str, Any]:
    """Per matrix the gate spread, entropy and offset from the threshold, a summary over matrices (with the
    matrices whose gates never left one bf16 step of the threshold, NOISE_BOUND), the search's noise test
    (method.noise_test) and a warning unless that test found the ranks supported."""
    bound = NOISE_BOUND * threshold
    per_matrix = {name: {"spread": gate_spread(gate), "entropy": gate_entropy(gate),
                         "offset": gate_offset(gate, threshold)} for name, gate in gates.items()}
    undecided = [name for name, d in per_matrix.items() if d["offset"] < bound]
    spreads = [d["spread"] for d in per_matrix.values()]
    entropies = [d["entropy"] for d in per_matrix.values()]
    k = max(len(gate) for gate in gates.values())
    summary = {"spread_min": min(spreads), "spread_median": statistics.median(spreads), "spread_max": max(spreads),
               "entropy_mean": statistics.fmean(entropies), "entropy_uniform": math.log(k),
               "noise_bound": bound, "undecided": len(undecided), "matrices": len(per_matrix)}
    warning = None
    if noise["verdict"] != noise_test.SUPPORTED:
        warning = (f"{noise_test.describe(noise)}: these ranks may be noise; search longer (search.epochs) or "
                   "raise search.alpha_lr, and compare with uniform LoRA before trusting them")
    return {"diagnostics": {"gates": per_matrix, "summary": summary, "undecided": undecided}, "noise_test": dict(noise),
            "warning": warning}


def save(
    run_dir: Path, ranks: Mapping[str, int], gates: Mapping[str, Sequence[float]], metadata: Mapping[str, Any]
) -> Path:
    """Write ranks.json (ranks, gates and provenance) and alpha.json (the gates alone); return ranks.json."""
    if set(ranks) != set(gates):
        raise ValueError("ranks and gates must name the same matrices")
    gates = {name: [float(g) for g in gate] for name, gate in gates.items()}
    payload = {"format_version": FORMAT_VERSION, **metadata, "ranks": dict(ranks), "alpha": gates}
    write_json(Path(run_dir) / ALPHA, gates)
    write_json(Path(run_dir) / RANKS, payload)
    return Path(run_dir) / RANKS


def load(path: str | Path, max_rank: int | None = None, readout: str | None = None) -> dict[str, Any]:
    """Read and validate a ranks.json written by save() (or by hand); returns the whole payload.

    readout (search.ranks_readout) names one of the file's "readouts" (every readout's ranks of its search);
    its ranks then replace the payload's "ranks", so one search serves a retrain per readout. Every rank must be
    an integer in [0, k]: at most the file's own "k" when it records one and at most max_rank (search.k), since a
    file's k says what its search could select, not what this run allows; at least one rank must be above 0, or
    there is nothing to retrain. The matrix widths are checked against the model by the preflight
    (check_rank_widths)."""
    path = Path(path)
    try:
        payload = json.loads(read_text(path, RanksFileError))
    except json.JSONDecodeError as err:
        raise RanksFileError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except RecursionError:  # json recurses once per nesting level: [[[[...]]]] of 100k levels
        raise RanksFileError(f"{path}: nested too deeply to be a ranks file") from None
    key = "ranks"
    if readout is not None and isinstance(payload, dict):
        readouts = payload.get("readouts")
        if not isinstance(readouts, dict) or readout not in readouts:
            held = ", ".join(sorted(readouts)) if isinstance(readouts, dict) else ""
            raise RanksFileError(f"{path}: search.ranks_readout={readout} is not among the file's 'readouts' "
                                 f"({held or 'none: a file written before ranks.json recorded every readout'})")
        payload = {**payload, "ranks": readouts[readout]}
        key = f"readouts.{readout}"
    ranks = payload.get("ranks") if isinstance(payload, dict) else None
    if not isinstance(ranks, dict) or not ranks:
        raise RanksFileError(f"{path}: key '{key}' must be a non-empty mapping of matrix name to rank")
    k = payload.get("k")
    if "k" in payload and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise RanksFileError(f"{path}: key 'k' = {k!r} is not a positive integer")
    bounds = [(bound, where) for bound, where in ((k, "the file's k"), (max_rank, "search.k")) if bound is not None]
    for name, rank in ranks.items():
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise RanksFileError(f"{path}: {key}[{name!r}] = {rank!r} is not a non-negative integer")
        for bound, where in bounds:
            if rank > bound:
                raise RanksFileError(f"{path}: {key}[{name!r}] = {rank} is above k = {bound} ({where})")
    if not any(ranks.values()):
        raise RanksFileError(f"{path}: every rank is 0 (key '{key}'): no matrix would get LoRA, so there is "
                             "nothing to retrain")
    return payload


def module_ranks(ranks: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Group public names by module: {'…c_attn': {'q': 3, 'v': 5}, '…query': {'all': 4}}."""
    grouped: dict[str, dict[str, int]] = {}
    for name, rank in ranks.items():
        module, _, part = name.partition(":")
        grouped.setdefault(module, {})[part or "all"] = rank
    return grouped


def peft_config(
    ranks: Mapping[str, int],
    *,
    lora_alpha: float,
    dropout: float,
    modules_to_save: Sequence[str],
    task_type: str | None,
    fan_in_fan_out: bool,
):
    """A peft LoraConfig that rebuilds exactly these ranks; rank-0 matrices are left out.

    Keys of rank_pattern/alpha_pattern are the escaped full module path, so peft's match
    ``(.*\\.)?(key)$`` hits one module only. A fused projection with several adapted slices becomes one
    peft adapter of rank sum(ranks) with block-structured B (see export.py), scaling 1 (alpha = rank).
    """
    from peft import LoraConfig

    rank_pattern, alpha_pattern = {}, {}
    grouped = module_ranks(ranks)
    for module, parts in grouped.items():
        total = sum(parts.values())
        if total == 0:
            continue
        key = re.escape(module)
        rank_pattern[key] = total
        alpha_pattern[key] = float(total) if list(parts) != ["all"] else float(lora_alpha)
    if not rank_pattern:
        raise ValueError("every rank is 0: there is no adapter to export")
    return LoraConfig(
        r=max(rank_pattern.values()),
        lora_alpha=lora_alpha,
        lora_dropout=dropout,
        target_modules=[m for m, p in grouped.items() if sum(p.values()) > 0],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        modules_to_save=list(modules_to_save) or None,
        task_type=task_type,
        fan_in_fan_out=fan_in_fan_out,
    )
