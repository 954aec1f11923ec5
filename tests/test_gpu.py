"""On a CUDA device: the search step never waits for the GPU, and bf16 autocast keeps the second-order term."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import GPT2_TARGETS, ROBERTA_TARGETS, tiny_gpt2, tiny_roberta, token_batch
from test_search import search_config

from autolora import hypergrad
from autolora.inject import inject, split_params, target_names
from autolora.models import four_d_attention_mask
from autolora.search import batch_loss, search_step, start_search

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run through the device tool)"),
]
CUDA = torch.device("cuda")
BF16 = functools.partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)


def _model(kind: str, impl: str):
    model = tiny_roberta() if kind == "roberta" else tiny_gpt2()
    model.config._attn_implementation = impl
    targets = ROBERTA_TARGETS if kind == "roberta" else GPT2_TARGETS
    inject(model, targets, {n: 8 for n in target_names(model, targets)}, lora_alpha=16, dropout=0.1,
           alpha_norm="softmax", trainable_modules=["classifier"] if kind == "roberta" else [])
    return model.to(CUDA).train()


def _batch(kind: str, impl: str, seed: int) -> dict:
    batch = token_batch(8, 16, seed=seed)
    batch["attention_mask"][:, 12:] = 0
    batch["attention_mask"] = four_d_attention_mask(batch["attention_mask"], causal=kind == "gpt2",
                                                    attn_implementation=impl)
    batch["labels"] = torch.arange(8) % 2 if kind == "roberta" else batch["input_ids"]
    return {k: v.to(CUDA) for k, v in batch.items()}


def _loss(kind):
    def roberta(out, batch):
        return F.cross_entropy(out.logits.float(), batch["labels"])

    def gpt2(out, batch):
        return F.cross_entropy(out.logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten())

    return roberta if kind == "roberta" else gpt2


@pytest.mark.parametrize("kind, impl, precision", [
    ("roberta", "sdpa", "bf16"), ("roberta", "sdpa", "fp32"), ("roberta", "eager", "bf16"), ("gpt2", "sdpa", "bf16"),
])
@pytest.mark.parametrize("eta", [0.0, 1e-3])
def test_search_step_never_synchronises(kind, impl, precision, eta):
    """Three search steps (first and second order) run under torch.cuda.set_sync_debug_mode('error')."""
    model = _model(kind, impl)
    cfg = search_config(eta=eta, max_grad_norm=1.0)
    state = start_search(model, cfg, total_steps=10)
    autocast = BF16 if precision == "bf16" else contextlib.nullcontext
    batches = [(_batch(kind, impl, 2 * i), _batch(kind, impl, 2 * i + 1)) for i in range(4)]
    search_step(model, state, *batches[0], cfg, _loss(kind), autocast)  # warm-up: handles, workspaces
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [search_step(model, state, tr, val, cfg, _loss(kind), autocast) for tr, val in batches[1:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()


def test_bf16_finite_difference_keeps_the_second_order_term(capsys):
    """Under bf16 autocast the FD hypergradient is closer to the fp32 exact one than the first-order
    gradient is, i.e. rounding does not wipe out the mixed term (errors are printed)."""
    model = _model("roberta", "eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.5)
    inner, outer = split_params(model)
    tr, val = _batch("roberta", "eager", 0), _batch("roberta", "eager", 1)

    def losses(autocast):
        return (batch_loss(model, _loss("roberta"), tr, autocast), batch_loss(model, _loss("roberta"), val, autocast))

    exact = hypergrad.exact(*losses(contextlib.nullcontext), inner, outer, eta=0.5).alpha_grad
    flat = lambda ts: torch.cat([t.flatten() for t in ts])  # noqa: E731
    rel = lambda a: float((flat(a) - flat(exact)).norm() / flat(exact).norm())  # noqa: E731
    first = rel(hypergrad.first_order(*losses(contextlib.nullcontext), inner, outer).alpha_grad)
    fd_fp32 = rel(hypergrad.finite_difference(*losses(contextlib.nullcontext), inner, outer, 0.5, 0.01).alpha_grad)
    fd_bf16 = rel(hypergrad.finite_difference(*losses(BF16), inner, outer, 0.5, 0.01).alpha_grad)
    with capsys.disabled():
        print(f"\nrelative error vs fp32 exact: first-order {first:.3e}, FD fp32 {fd_fp32:.3e}, FD bf16 {fd_bf16:.3e}")
    assert fd_fp32 < 1e-2
    assert fd_bf16 < first
