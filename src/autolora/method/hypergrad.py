"""The one-step look-ahead hypergradient of alpha (docs/method.md §2): pure functions, no loop.

Inner variables W are the LoRA factors and the task head; outer variables are alpha. With the
look-ahead W' = W - eta · ∇_W L_tr(W, alpha) (plain SGD, whatever optimiser really trains W):

    g_alpha = ∇_alpha L_val(W', alpha) - eta · ∇²_{alpha,W} L_tr(W, alpha) · ∇_W' L_val(W', alpha)

A loss is a function of a parameter dict (names as in ``model.named_parameters()``), so that
``torch.func.functional_call`` can substitute W' or W ± eps·v without touching the model's own tensors.
Nothing here calls ``.item()`` or branches on a tensor value: a step never waits for the device.

Data parallel (distributed.py): each process holds one shard of the D_tr and D_val batches; `mean`
averages a list of gradients over processes. It is applied where a later quantity depends on a
gradient (∇_W L_tr before the look-ahead, v before W ± eps·v) and once at the end, so that every
process computes the hypergradient of the combined batch and alpha stays identical everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]
LossFn = Callable[[Params], Tensor]
Mean = Callable[[list[Tensor]], list[Tensor]]  # the mean over data-parallel processes
HYPERGRADS = ("fd", "exact")
FD_SCHEMES = ("central", "forward")  # search.fd: the finite difference's stencil


def single_process(tensors: list[Tensor]) -> list[Tensor]:
    return tensors


@dataclass(frozen=True)
class HyperStep:
    """What one hypergradient evaluation yields; every tensor stays on the device."""

    alpha_grad: list[Tensor]  # total derivative of L_val(W', alpha) w.r.t. each alpha, in `outer` order
    inner_grad: list[Tensor]  # ∇_W L_tr(W, alpha), in `inner` order: reused for the W step
    train_loss: Tensor  # L_tr(W, alpha), detached
    val_loss: Tensor  # L_val(W', alpha), detached


def _train_grad(train_loss: LossFn, inner: Params, outer: Params, create_graph: bool = False,
                with_alpha: bool = False):
    """L_tr(W, alpha) and its gradient w.r.t. W (and alpha after it, when with_alpha)."""
    loss = train_loss({**inner, **outer})
    wrt = list(inner.values()) + (list(outer.values()) if with_alpha else [])
    return loss, torch.autograd.grad(loss, wrt, create_graph=create_graph)


def first_order(train_loss: LossFn, val_loss: LossFn, inner: Params, outer: Params,
                mean: Mean = single_process) -> HyperStep:
    """eta = 0: the validation gradient of alpha at the current W (the cheap ablation)."""
    loss_tr, g_w = _train_grad(train_loss, inner, outer)
    loss_val = val_loss({**inner, **outer})
    g_alpha = torch.autograd.grad(loss_val, list(outer.values()))
    grads = mean([*g_w, *g_alpha])
    return HyperStep(grads[len(g_w) :], grads[: len(g_w)], loss_tr.detach(), loss_val.detach())


def _global_norm(tensors: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def finite_difference(
    train_loss: LossFn, val_loss: LossFn, inner: Params, outer: Params, eta: float, fd_eps: float,
    mean: Mean = single_process, scheme: str = "central",
) -> HyperStep:
    """The DARTS finite difference for the mixed term along v, eps = fd_eps / ‖v‖ (docs/method.md §2).

    central: (∇_alpha L_tr(W+eps·v) - ∇_alpha L_tr(W-eps·v)) / 2eps, error O(eps²), four passes (train at
    W, validation at W', train at W±eps·v). forward: (∇_alpha L_tr(W+eps·v) - ∇_alpha L_tr(W)) / eps, error
    O(eps), three passes: ∇_alpha L_tr(W) comes from the first pass's backward. W', W± are fresh tensors:
    the model's parameters are never written.
    """
    if scheme not in FD_SCHEMES:
        raise ValueError(f"search.fd must be one of {FD_SCHEMES}, got {scheme!r}")
    names = list(inner)
    weights = [w.detach() for w in inner.values()]
    forward = scheme == "forward"
    loss_tr, grads = _train_grad(train_loss, inner, outer, with_alpha=forward)
    grads = mean(list(grads))
    g_w, g_alpha_at_w = grads[: len(weights)], grads[len(weights) :]  # the latter empty unless forward
    ahead = [w.requires_grad_() for w in torch._foreach_sub(weights, g_w, alpha=eta)]  # W'
    loss_val = val_loss({**dict(zip(names, ahead, strict=True)), **outer})
    grads = mean(list(torch.autograd.grad(loss_val, ahead + list(outer.values()))))
    v, g_val_alpha = list(grads[: len(ahead)]), list(grads[len(ahead) :])  # v = ∇_W' L_val

    eps = fd_eps / _global_norm(v).clamp_min(1e-12)  # a device scalar: no host sync
    step = torch._foreach_mul(v, eps)
    g_plus = _alpha_grad(train_loss, names, torch._foreach_add(weights, step), outer)
    if forward:  # ∇²_{alpha,W} L_tr · v; g_alpha_at_w is already the mean over processes
        mixed = torch._foreach_div(torch._foreach_sub(mean(g_plus), g_alpha_at_w), eps)
    else:
        g_minus = _alpha_grad(train_loss, names, torch._foreach_sub(weights, step), outer)
        mixed = torch._foreach_div(mean(torch._foreach_sub(g_plus, g_minus)), 2 * eps)
    g_alpha = torch._foreach_sub(g_val_alpha, torch._foreach_mul(mixed, eta))
    return HyperStep(g_alpha, g_w, loss_tr.detach(), loss_val.detach())


def _alpha_grad(train_loss: LossFn, names: list[str], weights: list[Tensor], outer: Params) -> list[Tensor]:
    loss = train_loss({**dict(zip(names, weights, strict=True)), **outer})
    return list(torch.autograd.grad(loss, list(outer.values())))


def exact(train_loss: LossFn, val_loss: LossFn, inner: Params, outer: Params, eta: float) -> HyperStep:
    """Differentiate through the look-ahead step (double backward): the reference for the FD.

    Needs attention that supports double backward (eager, not fused SDPA kernels).
    """
    loss_tr, g_w = _train_grad(train_loss, inner, outer, create_graph=True)
    ahead = [w - eta * g for w, g in zip(inner.values(), g_w, strict=True)]  # W'(alpha), graph kept
    loss_val = val_loss({**dict(zip(inner, ahead, strict=True)), **outer})
    g_alpha = torch.autograd.grad(loss_val, list(outer.values()))
    return HyperStep(list(g_alpha), [g.detach() for g in g_w], loss_tr.detach(), loss_val.detach())


def hypergradient(
    train_loss: LossFn, val_loss: LossFn, inner: Params, outer: Params, *, method: str, eta: float, fd_eps: float,
    fd_scheme: str = "central", mean: Mean = single_process,
) -> HyperStep:
    """Dispatch on the configured method; eta = 0 always takes the first-order path (no wasted passes)."""
    if method not in HYPERGRADS:
        raise ValueError(f"search.hypergrad must be one of {HYPERGRADS}, got {method!r}")
    if eta == 0:
        return first_order(train_loss, val_loss, inner, outer, mean)
    if method == "exact":
        if mean is not single_process:
            raise ValueError("search.hypergrad=exact runs in one process only (it is the reference for fd)")
        return exact(train_loss, val_loss, inner, outer, eta)
    return finite_difference(train_loss, val_loss, inner, outer, eta, fd_eps, mean, fd_scheme)
