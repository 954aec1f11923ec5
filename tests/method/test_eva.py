"""method/eva.py on a tiny random RoBERTa: EVA's ranks keep the budget r x modules, its A are the principal
directions of each target's inputs, the ranks survive a checkpoint (resume), and the token mask reads our 4D
attention masks."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_roberta, token_batch

from autolora.errors import ConfigError
from autolora.method import eva
from autolora.models.runtime import four_d_attention_mask

TARGETS = ["query", "value"]


def settings(**overrides) -> eva.EvaSettings:
    values = {"r": 4, "rho": 2.0, "tau": 0.99, "n_batches": 4, "use_label_mask": True, "whiten": False,
              "adjust_scaling_factors": True, **overrides}
    return eva.EvaSettings(**values)


def skewed_model(layer: int, scales: list[float], rest: float = 0.05):
    """The tiny RoBERTa with the LayerNorm feeding encoder layer `layer` (0: the embeddings') scaled so that its
    output, the query/value input, varies mostly along a few coordinates: a spectrum with known gaps."""
    model = tiny_roberta()
    norm = model.roberta.embeddings.LayerNorm if layer == 0 else model.roberta.encoder.layer[layer - 1].output.LayerNorm
    weight = torch.full((32,), rest)
    weight[: len(scales)] = torch.tensor(scales)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.zero_()
    return model


def batches(n: int = 4) -> list[dict[str, torch.Tensor]]:
    return [{**token_batch(8, 12, seed=i), "labels": torch.zeros(8, dtype=torch.long)} for i in range(n)]


def initialised(model, cfg: eva.EvaSettings, data=None):
    peft_model = eva.wrap(model, TARGETS, cfg, lora_alpha=8.0, dropout=0.0, task_type="SEQ_CLS",
                          heads=["classifier"], fan_in_fan_out=False)
    state = eva.svd_state(peft_model, data or batches(), cfg, progress=False)
    return peft_model, eva.load(peft_model, state, cfg)


def layer_ranks(peft_model) -> dict[str, int]:
    """Each LoRA layer's rank as its weights hold it, by base-model path."""
    return {name.removeprefix("base_model.model."): layer.lora_A["default"].weight.shape[0]
            for name, layer in eva.lora_layers(peft_model)}


def test_settings_refuse_rho_below_one_and_an_empty_budget():
    with pytest.raises(ValueError, match=r"eva.rho must lie in \[1, 1000\], got 0.5"):
        settings(rho=0.5)
    with pytest.raises(ValueError, match="eva.r must be >= 1, got 0"):
        settings(r=0)
    with pytest.raises(ValueError, match="eva.n_batches must be >= 1"):
        settings(n_batches=0)
    with pytest.raises(ValueError, match=r"eva.tau must lie in \(0, 1\]"):
        settings(tau=1.5)
    assert settings(r=3, rho=2.5).max_rank == 8


def test_rho_above_one_redistributes_ranks_within_the_budget():
    """Layer 0's inputs vary along 3 strong directions, layer 1's along many: EVA moves ranks to layer 1 (rho 2)
    and keeps r x 4 in all; rho 1 keeps r everywhere. final_ranks is what every layer's weights hold."""
    for rho, want in ((2.0, [3, 3, 5, 5]), (1.0, [4, 4, 4, 4])):
        peft_model, ranks = initialised(skewed_model(0, [10.0, 6.0, 3.0]), settings(rho=rho))
        assert list(ranks.values()) == want, rho
        assert ranks == layer_ranks(peft_model) and sum(ranks.values()) == 4 * len(ranks)
        assert list(ranks) == [f"roberta.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in TARGETS]


def test_a_module_whose_rank_goes_to_zero_loses_its_lora_layer():
    """Layer 1's inputs span 4 directions: with r=2, rho=4 the whole budget (8) goes there, layer 0 keeps no
    LoRA layer (peft restores the plain projection) and reports rank 0."""
    peft_model, ranks = initialised(skewed_model(1, [1.0, 1.0, 1.0, 1.0], rest=1e-3), settings(r=2, rho=4.0))
    assert list(ranks.values()) == [0, 0, 4, 4]
    assert set(layer_ranks(peft_model)) == {n for n, r in ranks.items() if r}
    assert isinstance(peft_model.base_model.model.roberta.encoder.layer[0].attention.self.query, torch.nn.Linear)


def test_lora_a_holds_the_principal_directions_of_the_layer_inputs_and_b_is_zero():
    """Layer 0's query A (rho 1: rank 4) against the principal directions of the same inputs (all tokens: no
    padding), from torch.linalg.svd of the centred activations; B = 0 leaves the model's function unchanged."""
    data = batches()
    model = skewed_model(0, [8.0, 4.0, 2.0, 1.0])
    seen = []
    query = model.roberta.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].reshape(-1, 32)))
    with torch.no_grad():
        before = [model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in data]
    handle.remove()
    inputs = torch.cat(seen)
    directions = torch.linalg.svd(inputs - inputs.mean(0), full_matrices=False).Vh[:4]
    peft_model, ranks = initialised(model, settings(rho=1.0), data)
    layer = peft_model.base_model.model.roberta.encoder.layer[0].attention.self.query
    a = layer.lora_A["default"].weight.detach()
    assert torch.allclose(a @ a.T, torch.eye(4), atol=1e-4)  # orthonormal rows, unlike a random init
    assert torch.all((a * directions).sum(1).abs() > 0.999)  # each row is that principal direction (up to sign)
    assert all(torch.count_nonzero(lay.lora_B["default"].weight) == 0 for _, lay in eva.lora_layers(peft_model))
    with torch.no_grad():
        after = [peft_model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in data]
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(before, after, strict=True))


def test_a_checkpoint_rebuilds_the_same_ranks_without_the_svd():
    """placeholder_state reads the ranks off a checkpoint's trainable parameters (removed layers absent): `load`
    then builds the same LoRA layers and the same peft config (rank and alpha patterns, target modules)."""
    cfg = settings(r=2, rho=4.0)
    peft_model, ranks = initialised(skewed_model(1, [1.0, 1.0, 1.0, 1.0], rest=1e-3), cfg)
    saved = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    fresh = eva.wrap(skewed_model(1, [1.0, 1.0, 1.0, 1.0], rest=1e-3), TARGETS, cfg, lora_alpha=8.0, dropout=0.0,
                     task_type="SEQ_CLS", heads=["classifier"], fan_in_fan_out=False)
    assert eva.load(fresh, eva.placeholder_state(fresh, saved), cfg) == ranks
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == set(saved)
    built, want = fresh.peft_config["default"], peft_model.peft_config["default"]
    assert (built.rank_pattern, built.alpha_pattern, sorted(built.target_modules)) == (
        want.rank_pattern, want.alpha_pattern, sorted(want.target_modules))


def test_token_positions_read_4d_masks_and_token_labels_only():
    """Padding is left out under every mask form (SDPA bool, eager additive, causal); token-level labels mask
    their ignored positions, per-row labels (classification) mask nothing."""
    from peft import EvaConfig, LoraConfig

    config = LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(use_label_mask=True, label_mask_value=-100))
    padding = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    want = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)}
    for causal in (False, True):
        for attn in ("sdpa", "eager"):
            mask = four_d_attention_mask(padding, causal=causal, attn_implementation=attn)
            got = eva.token_positions({"attention_mask": mask, "labels": torch.tensor([0, 1])}, config)
            assert {tuple(p) for p in got.tolist()} == want, (causal, attn)
    labels = torch.tensor([[-100, 5, 6, -100], [7, -100, -100, -100]])
    got = eva.token_positions({"attention_mask": padding, "labels": labels}, config)
    assert {tuple(p) for p in got.tolist()} == {(0, 1), (0, 2), (1, 0)}
    config.eva_config.use_label_mask = False
    assert len(eva.token_positions({"attention_mask": padding, "labels": labels}, config)) == 5


def test_an_svd_that_does_not_converge_stops_with_a_config_error():
    """peft cycles the batches until every needed component converges; a component that never does (tau 1 on
    noisy estimates) ends in a ConfigError after MAX_PASSES passes instead of a hang."""
    cfg = settings(tau=1.0, n_batches=2)
    peft_model = eva.wrap(tiny_roberta(), TARGETS, cfg, lora_alpha=8.0, dropout=0.0, task_type="SEQ_CLS",
                          heads=["classifier"], fan_in_fan_out=False)
    with pytest.raises(ConfigError, match=r"did not converge within 20 passes over eva.n_batches=2 batches"):
        eva.svd_state(peft_model, batches(2), cfg, progress=False)


def test_a_max_rank_wider_than_a_target_is_refused():
    with pytest.raises(ConfigError, match="eva.r x eva.rho = 48 exceeds the narrowest target's 32 inputs"):
        eva.wrap(tiny_roberta(), TARGETS, settings(r=16, rho=3.0), lora_alpha=8.0, dropout=0.0,
                 task_type="SEQ_CLS", heads=["classifier"], fan_in_fan_out=False)
