"""models.store_frozen_linears_in: frozen matmul weights kept in bf16 change nothing under bf16 autocast."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from conftest import GPT2_TARGETS, ROBERTA_TARGETS, tiny_gpt2, tiny_roberta, token_batch

from autolora.method.inject import inject
from autolora.models.runtime import store_frozen_linears_in
from autolora.models.targets import target_names

BF16_CPU = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)


def _searching_roberta():
    model = tiny_roberta()
    inject(model, ROBERTA_TARGETS, {n: 4 for n in target_names(model, ROBERTA_TARGETS)}, lora_alpha=8, dropout=0.0,
           alpha_norm="softmax", trainable_modules=["classifier"])
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(".B"):  # B starts at zero: give the LoRA path something to carry
            torch.nn.init.normal_(p, std=0.1)
    return model


def _loss_and_grads(model, batch, labels):
    with BF16_CPU():
        logits = model(**batch).logits
    loss = F.cross_entropy(logits.float(), labels)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, trainable)


def test_bf16_frozen_weights_give_bit_identical_loss_and_gradients():
    model, batch, labels = _searching_roberta(), token_batch(), torch.tensor([0, 1, 1, 0])
    loss, grads = _loss_and_grads(model, batch, labels)
    assert store_frozen_linears_in(model, torch.bfloat16) > 0
    loss_cast, grads_cast = _loss_and_grads(model, batch, labels)
    assert torch.equal(loss, loss_cast)
    assert len(grads) == len(grads_cast) and all(torch.equal(a, b) for a, b in zip(grads, grads_cast, strict=True))


def test_only_frozen_untied_matmul_weights_change_dtype():
    model = tiny_gpt2()
    inject(model, GPT2_TARGETS, {n: 2 for n in target_names(model, GPT2_TARGETS)}, lora_alpha=4, dropout=0.0,
           alpha_norm=None, trainable_modules=[])
    changed = store_frozen_linears_in(model, torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters(remove_duplicate=False)}
    assert dtypes["transformer.h.0.attn.c_attn.base.weight"] == torch.bfloat16  # Conv1D inside the LoRA layer
    assert dtypes["transformer.h.1.mlp.c_fc.weight"] == torch.bfloat16
    assert dtypes["lm_head.weight"] == dtypes["transformer.wte.weight"] == torch.float32  # tied to the embedding
    assert dtypes["transformer.h.0.ln_1.weight"] == torch.float32
    assert all(dtypes[n] == torch.float32 for n, p in model.named_parameters() if p.requires_grad)  # LoRA factors
    assert changed == sum(1 for n, d in dtypes.items() if d == torch.bfloat16)
    assert store_frozen_linears_in(model, torch.bfloat16) == 0  # idempotent
    store_frozen_linears_in(model, torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_4d_masks_only_for_architectures_on_transformers_masking_utilities():
    """BERT, GPT-2 and Llama take the ready 4D mask; DeBERTa-v2, which reads its mask as 0/1, keeps the 2D one:
    given the additive 4D mask it masks every position and its loss is NaN (checked here, so the rule is not
    kept for nothing)."""
    import dataclasses

    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from autolora.models.backbone import ModelConfig, takes_4d_mask
    from autolora.models.runtime import four_d_attention_mask

    def random(model_type: str, **kwargs) -> ModelConfig:
        return ModelConfig(name=model_type, kind="auto", path=None, config={"model_type": model_type, **kwargs},
                           tokenizer="t", targets=None, head_modules=("classifier",), attn_implementation="eager",
                           fan_in_fan_out=None, gguf_file=None, special_tokens=None)

    assert takes_4d_mask(random("bert"), "sequence_classification")
    assert takes_4d_mask(random("gpt2"), "causal_lm") and takes_4d_mask(random("llama"), "causal_lm")
    assert not takes_4d_mask(random("deberta-v2"), "sequence_classification")
    assert takes_4d_mask(dataclasses.replace(random("llama"), gguf_file="m.gguf"), "causal_lm")
    torch.manual_seed(0)
    deberta = DebertaV2ForSequenceClassification(DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        attn_implementation="eager")).eval()
    batch = token_batch(2, 6)
    batch["attention_mask"][1, 4:] = 0
    labels = torch.tensor([0, 1])
    assert torch.isfinite(deberta(**batch, labels=labels).loss)
    four_d = four_d_attention_mask(batch["attention_mask"], causal=False, attn_implementation="eager")
    assert torch.isnan(deberta(input_ids=batch["input_ids"], attention_mask=four_d, labels=labels).loss)
