"""Thresholding, the ranks file, and the peft export (config and weights)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import GPT2_TARGETS, ROBERTA_TARGETS, tiny_gpt2, tiny_roberta, token_batch

from autolora.method import export, noise_test, ranks
from autolora.method.inject import adapter_ranks, inject
from autolora.models.targets import target_names


def test_known_tables():
    """Hand-made gates with known answers: count of gates >= threshold; gates that never left the threshold (b)
    are undecided and get min_rank, not k."""
    gates = {"a": [0.5, 0.3, 0.1, 0.1], "b": [0.25, 0.25, 0.25, 0.25], "c": [0.7, 0.1, 0.1, 0.1]}
    assert ranks.select_ranks(gates, 0.25) == {"a": 2, "b": 0, "c": 1}
    assert ranks.select_ranks(gates, 0.25, min_rank=1) == {"a": 2, "b": 1, "c": 1}


def test_all_gates_below_the_threshold_remove_the_adapter():
    """A matrix with every gate under the threshold gets rank 0 (no LoRA), unless min_rank says otherwise."""
    gates = {"x": [0.2, 0.2, 0.2, 0.2]}
    assert ranks.select_ranks(gates, 0.25) == {"x": 0}
    assert ranks.select_ranks(gates, 0.25, min_rank=1) == {"x": 1}


def test_ties_at_the_threshold_are_kept_despite_float32_rounding():
    """A gate equal to the threshold counts, also when float32 rounding puts it a hair below."""
    third = float(torch.tensor(1 / 3, dtype=torch.float32))
    below = float(torch.nextafter(torch.tensor(1 / 3, dtype=torch.float32), torch.tensor(0.0)))
    assert ranks.select_ranks({"x": [third, third, third, 0.0]}, 1 / 3) == {"x": 3}
    assert ranks.select_ranks({"x": [third, third, third]}, 1 / 3) == {"x": 0}  # all at the threshold: undecided
    assert ranks.select_ranks({"x": [below, 0.5, 0.1]}, 1 / 3) == {"x": 2}
    assert ranks.select_ranks({"x": [1 / 3 - 1e-3, 0.5, 0.1]}, 1 / 3) == {"x": 1}


def test_k_equal_one():
    """k = 1: the softmax gate is exactly 1 whatever alpha is, at the threshold 1/k: undecided, min_rank (and
    SearchConfig refuses k = 1 under softmax); a sigmoid gate that moved decides."""
    gate = torch.softmax(torch.randn(1), 0).tolist()
    assert ranks.select_ranks({"x": gate}, ranks.default_threshold(1, "softmax")) == {"x": 0}
    assert ranks.select_ranks({"x": gate}, ranks.default_threshold(1, "softmax"), min_rank=1) == {"x": 1}
    assert ranks.select_ranks({"x": [0.6]}, ranks.default_threshold(1, "sigmoid")) == {"x": 1}


def test_ranks_stay_in_range_and_fall_as_the_threshold_rises():
    """For random gates: min_rank <= rank <= k, and a higher threshold never raises a rank."""
    gen = torch.Generator().manual_seed(0)
    gates = {f"m{i}": torch.softmax(torch.randn(8, generator=gen), 0).tolist() for i in range(20)}
    previous = None
    for threshold in (0.01, 0.05, 0.1, 0.125, 0.2, 0.4, 0.9):
        found = ranks.select_ranks(gates, threshold, min_rank=1)
        assert all(1 <= r <= 8 for r in found.values())
        if previous is not None:
            assert all(found[n] <= previous[n] for n in gates)
        previous = found


def test_threshold_outside_unit_interval_is_rejected():
    """The threshold lies in (0, 1]."""
    with pytest.raises(ValueError, match="threshold"):
        ranks.select_ranks({"x": [1.0]}, 0.0)


def test_save_load_round_trip(tmp_path):
    """ranks.json keeps ranks, gates and provenance; alpha.json holds the gates per matrix."""
    found, gates = {"a": 2, "b:q": 0}, {"a": [0.6, 0.4], "b:q": [0.1, 0.2]}
    path = ranks.save(tmp_path, found, gates, {"model": "m", "task": "t", "seed": 3, "threshold": 0.5})
    payload = ranks.load(path)
    assert payload["ranks"] == found and payload["alpha"] == gates and payload["seed"] == 3
    assert json.loads((tmp_path / "alpha.json").read_text()) == gates


@pytest.mark.parametrize("content, message", [
    ('{"ranks": {"a": -1}}', r"ranks\['a'\] = -1"),
    ('{"ranks": {"a": 1.5}}', r"ranks\['a'\] = 1.5"),
    ('{"ranks": {}}', "key 'ranks'"),
    ('{"ranks": {"a": 1}', ":1: not valid JSON"),
])
def test_bad_ranks_files_name_the_file_and_key(tmp_path, content, message):
    """A malformed ranks.json stops with the file and the offending key."""
    path = tmp_path / "ranks.json"
    path.write_text(content)
    with pytest.raises(ranks.RanksFileError, match=message):
        ranks.load(path)
    with pytest.raises(ranks.RanksFileError, match="missing.json: file not found"):
        ranks.load(tmp_path / "missing.json")


def test_a_readout_of_the_file_replaces_its_ranks(tmp_path):
    """search.ranks_readout: load() returns the named readout's ranks in place of the file's "ranks", checks
    them like "ranks" (naming the key), and names the readouts a file holds when it lacks the one asked for."""
    path = tmp_path / "ranks.json"
    path.write_text(json.dumps({"k": 4, "ranks": {"a": 2, "b": 2},
                                "readouts": {"gates": {"a": 2, "b": 2}, "budget": {"a": 4, "b": 0},
                                             "energy": {"a": 5, "b": 1}, "released": {"a": 0, "b": 0}}}))
    assert ranks.load(path)["ranks"] == {"a": 2, "b": 2}
    assert ranks.load(path, readout="budget")["ranks"] == {"a": 4, "b": 0}
    with pytest.raises(ranks.RanksFileError, match=r"readouts.energy\['a'\] = 5 is above k = 4"):
        ranks.load(path, readout="energy")
    with pytest.raises(ranks.RanksFileError, match=r"every rank is 0 \(key 'readouts.released'\)"):
        ranks.load(path, readout="released")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"ranks": {"a": 1}}))
    with pytest.raises(ranks.RanksFileError, match="ranks_readout=budget is not among the file's 'readouts' "
                                                   r"\(none: a file written before"):
        ranks.load(old, readout="budget")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"ranks": {"a": 1}, "readouts": {"gates": {"a": 1}}}))
    with pytest.raises(ranks.RanksFileError, match=r"budget is not among the file's 'readouts' \(gates\)"):
        ranks.load(partial, readout="budget")


def _peft_ranks(peft_model) -> dict[str, int]:
    from peft.tuners.lora import LoraLayer

    inner = peft_model.base_model.model
    return {name: module.r["default"] for name, module in inner.named_modules() if isinstance(module, LoraLayer)}


def test_peft_round_trip_gives_exactly_the_found_ranks():
    """A peft model built from the exported LoraConfig has each module's rank; rank-0 modules get none.

    12 layers, so that 'layer.1.' and 'layer.11.' both exist: each anchored key matches one module only.
    """
    from peft import get_peft_model

    model = tiny_roberta(layers=12)
    names = target_names(model, ROBERTA_TARGETS)
    found = {name: (i * 5) % 9 for i, name in enumerate(names)}  # 0..8, every value, rank 0 included
    config = ranks.peft_config(found, lora_alpha=16, dropout=0.0, modules_to_save=["classifier"],
                               task_type="SEQ_CLS", fan_in_fan_out=False)
    assert _peft_ranks(get_peft_model(model, config)) == {n: r for n, r in found.items() if r}


def test_peft_export_reproduces_our_logits(tmp_path):
    """Saved in peft format and loaded with PeftModel.from_pretrained, the adapter gives our logits."""
    from peft import PeftModel

    model = tiny_roberta()
    names = target_names(model, ROBERTA_TARGETS)
    found = dict(zip(names, [3, 0, 5, 1], strict=True))
    inject(model, ROBERTA_TARGETS, found, lora_alpha=16, dropout=0.0, alpha_norm=None, trainable_modules=["classifier"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    model.eval()
    batch = token_batch(3, 7)
    with torch.no_grad():
        ours = model(**batch).logits
    config = ranks.peft_config(found, lora_alpha=16, dropout=0.0, modules_to_save=["classifier"],
                               task_type="SEQ_CLS", fan_in_fan_out=False)
    export.to_peft(model, config).save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_roberta(), tmp_path / "adapter").eval()
    assert _peft_ranks(loaded) == {n: r for n, r in found.items() if r}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, ours, rtol=1e-5, atol=1e-6)


def _exported_with_the_same_logits(model, targets, found, *, fan_in_fan_out: bool):
    """Inject `found` ranks, move every LoRA factor off its init, export to peft; the peft model's logits must
    equal ours (asserted here). Returns the peft model for the caller's rank checks."""
    inject(model, targets, found, lora_alpha=8, dropout=0.0, alpha_norm=None, trainable_modules=[])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    batch = token_batch(2, 6)
    with torch.no_grad():
        ours = model(**batch).logits
    config = ranks.peft_config(found, lora_alpha=8, dropout=0.0, modules_to_save=[], task_type="CAUSAL_LM",
                               fan_in_fan_out=fan_in_fan_out)
    peft_model = export.to_peft(model, config).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, ours, rtol=1e-5, atol=1e-5)
    return peft_model


def test_fused_q_and_v_ranks_export_as_one_block_adapter():
    """GPT-2 c_attn with q rank 2 and v rank 5: one peft adapter of rank 7 with the same outputs."""
    model = tiny_gpt2()
    names = target_names(model, GPT2_TARGETS)
    found = dict(zip(names, [2, 5, 3, 0], strict=True))
    peft_model = _exported_with_the_same_logits(model, GPT2_TARGETS, found, fan_in_fan_out=True)
    assert _peft_ranks(peft_model) == {"transformer.h.0.attn.c_attn": 7, "transformer.h.1.attn.c_attn": 3}
    assert adapter_ranks(model) == {n: r for n, r in found.items() if r}


def test_per_head_q_and_v_ranks_export_as_one_block_adapter():
    """GPT-NeoX query_key_value ([q | k | v] per head) with q rank 2 and v rank 3: one peft adapter of rank 5
    with the same logits (each part's B lands on its rows in every head)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from autolora.models.targets import attention_targets

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=32,
                                             attn_implementation="eager")).eval()
    targets = attention_targets(model, 2)
    found = dict(zip(target_names(model, targets), [2, 3, 1, 4], strict=True))
    peft_model = _exported_with_the_same_logits(model, targets, found, fan_in_fan_out=False)
    assert _peft_ranks(peft_model) == {"gpt_neox.layers.0.attention.query_key_value": 5,
                                       "gpt_neox.layers.1.attention.query_key_value": 5}


def test_gate_statistics_against_hand_computed_values():
    """Spread, entropy and offset from the threshold on small gates worked out by hand."""
    import math

    assert ranks.gate_spread([0.1, 0.3, 0.2]) == pytest.approx(0.2)
    assert ranks.gate_entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert ranks.gate_entropy([1.0, 0.0, 0.0]) == 0.0
    assert ranks.gate_entropy([2.0, 2.0]) == pytest.approx(math.log(2))  # normalised first
    assert ranks.gate_entropy([-0.1, 0.5, 0.5]) == pytest.approx(math.log(2))  # alpha_norm=none: negatives clamped
    assert ranks.gate_offset([0.1, 0.15], 0.125) == pytest.approx(0.025)
    assert ranks.gate_offset([0.7, 0.7], 0.5) == pytest.approx(0.2)  # sigmoid gates that moved together


def test_gate_entropy_matches_scipy_on_random_gates():
    """gate_entropy equals scipy.stats.entropy (natural log, normalising) on random softmax gates."""
    from scipy.stats import entropy

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        gate = torch.softmax(3 * torch.randn(8, generator=gen, dtype=torch.float64), 0).tolist()
        assert ranks.gate_entropy(gate) == pytest.approx(entropy(gate), abs=1e-12)


SUPPORTED = {"verdict": noise_test.SUPPORTED, "correlation": 0.4, "p": 0.001, "matrices": 4, "level": 0.05}
NOISE = {"verdict": noise_test.NOISE, "correlation": 0.01, "p": 0.45, "matrices": 4, "level": 0.05}


def test_undecided_gates_are_counted_and_the_warning_follows_the_noise_test():
    """Gates within one bf16 step of 1/k (a 2-step search) are counted as undecided; the warning comes from the
    noise test alone: none where it found the ranks supported, one naming its p-value where it did not."""
    k = 8
    near = {"a": [1 / k + 1e-7] * 4 + [1 / k - 1e-7] * 4, "b": [1 / k] * 8}
    separated = {"c": [0.3, 0.3, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05], "d": [0.2, 0.15, 0.13, 0.12, 0.1, 0.1, 0.1, 0.1]}
    report = ranks.search_diagnostics({**near, **separated}, 1 / k, SUPPORTED)
    assert report["diagnostics"]["undecided"] == ["a", "b"] and report["warning"] is None
    summary = report["diagnostics"]["summary"]
    assert summary["noise_bound"] == pytest.approx(2**-11) and summary["spread_max"] == pytest.approx(0.25)
    assert report["noise_test"] == SUPPORTED
    warned = ranks.search_diagnostics(separated, 1 / k, NOISE)["warning"]
    assert "ranks indistinguishable from noise" in warned and "p = 0.45" in warned and "search.epochs" in warned
    untested = ranks.search_diagnostics(separated, 1 / k, noise_test.untested(2))["warning"]
    assert "noise test not run: 2 search steps" in untested
    bound = ranks.NOISE_BOUND / k
    assert ranks.search_diagnostics({"x": [1 / k + 0.99 * bound, 1 / k - 0.99 * bound]}, 1 / k,
                                    SUPPORTED)["diagnostics"]["undecided"] == ["x"]
    assert ranks.search_diagnostics({"x": [1 / k + 1.01 * bound, 1 / k - 1.01 * bound]}, 1 / k,
                                    SUPPORTED)["diagnostics"]["undecided"] == []


def test_noise_bound_is_one_bf16_step_below_the_threshold():
    """1/8 minus the bound is the next bf16 number below 1/8, and gates closer than half the bound round to 1/8."""
    tau = torch.tensor(1 / 8, dtype=torch.bfloat16)
    below = torch.nextafter(tau, torch.tensor(0.0, dtype=torch.bfloat16))
    assert float(tau - below) == ranks.NOISE_BOUND / 8
    close = torch.tensor([1 / 8 - 0.49 * ranks.NOISE_BOUND / 8, 1 / 8 + 0.49 * ranks.NOISE_BOUND / 8])
    assert torch.equal(close.to(torch.bfloat16), torch.full((2,), 1 / 8, dtype=torch.bfloat16))
