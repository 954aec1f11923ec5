"""The ΔW readouts (energy, budget), the global softmax across matrices, and their place in a run (issue #31)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose
from torch import nn

from autolora.method import readout
from autolora.method.inject import update_spectra
from autolora.method.layers import GateGroup, PartSpec, SelectableLoRA
from autolora.models.targets import WHOLE


def planted_layer(rank: int, d: int = 12, k: int = 8, seed: int = 0) -> SelectableLoRA:
    """A search layer whose learned update ΔW = scale · B diag(gate) A has exactly `rank` (B's first columns)."""
    gen = torch.Generator().manual_seed(seed)
    layer = SelectableLoRA(nn.Linear(d, d), [PartSpec(WHOLE, 0, d, k)], lora_alpha=k, dropout=0.0,
                           alpha_norm="softmax")
    with torch.no_grad():
        part = layer.parts[WHOLE]
        part.B.zero_()
        part.B[:, :rank] = torch.randn(d, rank, generator=gen)
        part.alpha.copy_(torch.randn(k, generator=gen))
    return layer


class Stack(nn.Module):
    """Several planted layers side by side, public names m0, m1, ..."""

    def __init__(self, planted_ranks, d: int = 12):
        super().__init__()
        self.m = nn.ModuleList([planted_layer(r, d, seed=i) for i, r in enumerate(planted_ranks)])


def spectra_of(planted_ranks, d: int = 12) -> dict:
    return {name.replace("m.", "m"): value for name, value in update_spectra(Stack(planted_ranks, d)).items()}


def test_a_planted_update_of_known_rank_is_read_out_exactly_by_energy():
    """ΔW of rank 0, 1, 3, 8: energy 1.0 (up to rounding) gives exactly those ranks; ΔW = 0 gives rank 0."""
    spectra = spectra_of([0, 1, 3, 8])
    assert readout.energy_ranks(spectra, 1.0 - 1e-9) == {"m0": 0, "m1": 1, "m2": 3, "m3": 8}
    assert readout.energy_ranks(spectra, 0.9, min_rank=1)["m0"] == 1
    assert all(cost == 24 for _, cost in spectra.values())  # in + out of a 12 x 12 projection


def test_energy_counts_the_fewest_components_holding_the_share():
    """σ = (3, 2, 1, 0): σ² = 9, 4, 1 of 14; 60% -> 1 (9/14 = 0.64), 90% -> 2 (13/14 = 0.93), 95% -> 3."""
    spectra = {"x": ([3.0, 2.0, 1.0, 0.0], 10)}
    assert [readout.energy_ranks(spectra, e)["x"] for e in (0.6, 0.9, 0.95, 1.0)] == [1, 2, 3, 3]
    with pytest.raises(ValueError, match="energy"):
        readout.energy_ranks(spectra, 0.0)


def test_the_global_budget_sums_to_the_budget_and_can_give_rank_0():
    """Equal costs: exactly budget / cost components are handed out, the largest σ² first, so a matrix whose
    update is small everywhere gets 0; ties are broken by name."""
    spectra = {"big": ([5.0, 4.0, 3.0, 0.1], 10), "mid": ([3.5, 0.2, 0.1, 0.0], 10),
               "small": ([0.3, 0.2, 0.1, 0.0], 10)}
    ranks = readout.budget_ranks(spectra, 40)
    assert ranks == {"big": 3, "mid": 1, "small": 0}
    assert readout.parameter_count(ranks, spectra) == 40
    assert readout.budget_ranks(spectra, 40, min_rank=1) == {"big": 2, "mid": 1, "small": 1}
    with pytest.raises(ValueError, match="budget"):
        readout.budget_ranks(spectra, 20, min_rank=1)


def test_the_budget_ranks_by_energy_per_parameter_and_never_overspends():
    """A cheaper matrix's component wins at a lower σ², and a component that does not fit is skipped for one
    that does; zero singular values are never taken."""
    spectra = {"wide": ([2.0, 1.0], 40), "narrow": ([1.5, 1.2], 10)}  # per parameter: 0.1, 0.025 vs 0.225, 0.144
    assert readout.budget_ranks(spectra, 20) == {"wide": 0, "narrow": 2}
    assert readout.budget_ranks(spectra, 60) == {"wide": 1, "narrow": 2}
    assert readout.budget_ranks({"z": ([0.0, 0.0], 5)}, 100) == {"z": 0}


def test_random_spectra_respect_the_budget_and_the_equal_cost_count():
    """Random spectra and budgets: the count never exceeds the budget, every rank lies in [0, k], and with equal
    costs the budget is spent exactly whenever enough non-zero components exist."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        spectra = {f"m{i}": (sorted(torch.rand(8, generator=gen).tolist(), reverse=True), 16) for i in range(6)}
        budget = int(torch.randint(0, 49, (1,), generator=gen)) * 16
        ranks = readout.budget_ranks(spectra, budget)
        assert readout.parameter_count(ranks, spectra) == budget
        assert all(0 <= r <= 8 for r in ranks.values())


def test_select_dispatches_and_budget_spends_the_gates_count():
    """readout=budget spends what readout=gates would retrain; an unknown readout names the valid ones."""
    spectra = {"a": ([4.0, 3.0, 2.0, 1.0], 8), "b": ([0.5, 0.4, 0.0, 0.0], 8)}
    gates = {"a": [0.4, 0.3, 0.2, 0.1], "b": [0.3, 0.3, 0.3, 0.1]}  # gates readout: a 2, b 3 -> 5 components
    inputs = dict(gates=gates, alphas={"a": [1, 0, 0, 0], "b": [0, 0, 0, 1]}, spectra=spectra, threshold=0.25,
                  min_rank=0, energy=0.9)
    every = readout.every_readout(**inputs)
    assert every["gates"] == {"a": 2, "b": 3}
    assert every["budget"] == {"a": 4, "b": 1}
    assert readout.parameter_count(every["budget"], spectra) == readout.parameter_count(every["gates"], spectra)
    assert every["energy"] == {"a": 3, "b": 2}
    assert every["released"] == {"a": 1, "b": 1}
    with pytest.raises(ValueError, match="search.readout"):
        readout.select("oracle", **inputs)


def test_the_global_softmax_shares_one_budget_across_matrices():
    """Coupled parts: the gates of all matrices sum to the number of matrices (mean 1/k per matrix, as the
    per-matrix softmax), equal a softmax over the concatenated alpha, and one matrix can end below 1/k in every
    component (rank 0 under the 1/k threshold); uncoupled, each part is its own softmax."""
    k, d = 4, 6
    layers = [SelectableLoRA(nn.Linear(d, d), [PartSpec(WHOLE, 0, d, k)], lora_alpha=k, dropout=0.0,
                             alpha_norm="global_softmax") for _ in range(3)]
    parts = [layer.parts[WHOLE] for layer in layers]
    with torch.no_grad():
        for part, shift in zip(parts, (1.0, 0.0, -3.0), strict=True):
            part.alpha.copy_(torch.randn(k) * 0.1 + shift)
    assert torch.allclose(parts[0].gate(), torch.softmax(parts[0].alpha, 0))  # alone: its own softmax
    group = GateGroup(parts)
    for part in parts:
        part.group = group
    gates = torch.cat([part.gate() for part in parts])
    expected = torch.softmax(torch.cat([part.alpha for part in parts]), 0) * 3
    torch.testing.assert_close(gates, expected)
    assert float(gates.detach().sum()) == pytest.approx(3.0)
    assert all(float(g) < 1 / k for g in parts[2].gate())


def test_the_global_softmax_follows_functional_call_and_passes_the_gradient_across_matrices():
    """The group reads each part's alpha at call time: alpha substituted by functional_call (the hypergradient's
    path) is what it normalises, and the loss of one matrix's output moves every matrix's alpha."""
    from conftest import ROBERTA_TARGETS, tiny_roberta, token_batch

    from autolora.method.inject import gates, inject, split_params
    from autolora.models.targets import target_names

    model = tiny_roberta()
    names = target_names(model, ROBERTA_TARGETS)
    inject(model, ROBERTA_TARGETS, dict.fromkeys(names, 4), lora_alpha=4, dropout=0.0, alpha_norm="global_softmax",
           trainable_modules=())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".B"):
                param.normal_()
    total = sum(float(g.sum()) for g in gates(model).values())
    assert total == pytest.approx(len(names))
    _, outer = split_params(model)
    moved = {name: alpha.detach() + torch.arange(4.0) for name, alpha in outer.items()}
    batch = token_batch()
    plain = model(**batch).logits
    substituted = torch.func.functional_call(model, moved, args=(), kwargs=batch, strict=False).logits
    assert not torch.allclose(plain, substituted)
    first = next(n for n in names if n.endswith("query"))
    target = model.get_submodule(first)
    loss = target(torch.randn(2, 3, target.in_features)).sum()
    grads = torch.autograd.grad(loss, list(outer.values()))
    assert all(float(g.abs().sum()) > 0 for g in grads)  # every matrix's alpha feels one matrix's output


@pytest.mark.parametrize("choice", ["energy", "budget", "global_softmax"])
def test_a_run_with_each_variant_writes_every_readout(tmp_path, choice):
    """search=energy|budget|global_softmax end to end (debug=tiny): ranks.json's ranks are its readout's, it
    records every readout and the update's spectra, and budget's parameter count equals the gates readout's."""
    from autolora.runner.pipeline import execute

    execute(compose("debug=tiny", f"search={choice}"), tmp_path)
    saved = json.loads((tmp_path / "ranks.json").read_text())
    assert set(saved["readouts"]) == set(readout.READOUTS)
    assert saved["ranks"] == saved["readouts"][saved["readout"]]
    assert set(saved["update_spectra"]) == set(saved["ranks"])
    count = {name: sum(saved["readouts"][name].values()) for name in ("gates", "budget")}
    assert count["budget"] <= count["gates"]  # equal costs in the tiny model: equal unless ΔW runs out
