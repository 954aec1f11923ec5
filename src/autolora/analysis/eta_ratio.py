"""What the look-ahead step eta does under an AdamW inner loop (issue #31): the hypergradient's second-order part
against its first-order part, at eta = lr (conf/search/default.yaml) and at eta matched to AdamW's actual step.

The hypergradient is g = ∇_alpha L_val(W') - eta · ∇²_{alpha,W} L_tr · ∇_W' L_val with W' = W - eta · ∇_W L_tr
(hypergrad.py). eta = lr is SGD's step; AdamW moves W by lr · m / (sqrt(v) + eps), per coordinate about lr
whatever the gradient's size, so its step is much longer than lr · ∇_W L_tr when gradients are small. Matched eta:
‖ΔW_AdamW‖ / ‖∇_W L_tr‖, the SGD step as long as the step W really takes. At each probe the search's state is
frozen and on `pairs` (D_tr, D_val) batch pairs we measure ‖eta · mixed‖ / ‖∇_alpha L_val(W')‖.

``python -m autolora.analysis.eta_ratio`` runs it on the planted teacher (analysis/planted.py) and prints one JSON
line per probe.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

from autolora.analysis import planted
from autolora.method.hypergrad import hypergradient
from autolora.method.inject import inject
from autolora.method.search import batch_loss, forward_loss, search_step, start_search


def _norm(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([t.detach().norm() for t in tensors])))


def ratio(loss, tr, val, state, eta: float) -> float:
    """‖second-order part‖ / ‖first-order part‖ of the fd hypergradient on one batch pair at step eta."""
    no_dropout = lambda _: torch.enable_grad()  # noqa: E731 (the planted student has no dropout)
    hyper = hypergradient(batch_loss(loss, tr, no_dropout), batch_loss(loss, val, no_dropout), state.inner,
                          state.outer, method="fd", eta=eta, fd_eps=0.01, fd_scheme="forward")
    g_w = torch.autograd.grad(loss({**state.inner, **state.outer}, tr), list(state.inner.values()))
    ahead = {name: (w - eta * g).detach() for (name, w), g in zip(state.inner.items(), g_w, strict=True)}
    first = torch.autograd.grad(loss({**ahead, **state.outer}, val), list(state.outer.values()))
    second = [total - f for total, f in zip(hyper.alpha_grad, first, strict=True)]
    return _norm(second) / max(_norm(first), 1e-30)


def probe(study, strength: float, n_train: int, steps: int, probes: list[int], pairs: int, seed: int) -> list[dict]:
    """Search the planted student for `steps` steps; at each probe step measure matched eta and both ratios."""
    base = planted.backbone(study, seed)
    ranks = planted.planted_ranks(base)
    source = planted.teacher(base, ranks, strength, seed + 1000)
    train = planted.make_batches(source, n_train, study, study.noise, seed + 2000)
    val = planted.make_batches(source, n_train, study, study.noise, seed + 3000)
    student = copy.deepcopy(base)
    inject(student, planted.TARGETS, dict.fromkeys(ranks, study.k), lora_alpha=16.0, dropout=0.0,
           alpha_norm=study.alpha_norm, trainable_modules=[])
    cfg = planted.search_config(study, steps, len(train))
    state = start_search(student, cfg, steps)
    loss = forward_loss(student, planted.hidden_mse, torch.enable_grad)
    torch.manual_seed(seed + 4000)
    out = []
    for step in range(1, steps + 1):
        tr, vb = train[(step - 1) % len(train)], val[(step - 1) % len(val)]
        if step in probes:
            g_w = torch.autograd.grad(loss({**state.inner, **state.outer}, tr), list(state.inner.values()))
            before = [w.detach().clone() for w in state.inner.values()]
            lr_now = state.opt_w.param_groups[0]["lr"]
            search_step(student, state, tr, vb, cfg, planted.hidden_mse, torch.enable_grad)
            moved = [w.detach() - b for w, b in zip(state.inner.values(), before, strict=True)]
            matched = _norm(moved) / _norm(g_w)
            batch_pairs = [(train[i % len(train)], val[i % len(val)]) for i in range(pairs)]
            at_lr = [ratio(loss, a, b, state, cfg.eta) for a, b in batch_pairs]
            at_matched = [ratio(loss, a, b, state, matched) for a, b in batch_pairs]
            out.append({"seed": seed, "strength": strength, "n_train": n_train, "step": step, "eta": cfg.eta,
                        "scheduled_lr": lr_now, "matched_eta": matched, "matched_over_eta": matched / cfg.eta,
                        "ratio_at_eta": statistics.median(at_lr), "ratio_at_matched": statistics.median(at_matched)})
            print(json.dumps(out[-1]), flush=True)
        else:
            search_step(student, state, tr, vb, cfg, planted.hidden_mse, torch.enable_grad)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m autolora.analysis.eta_ratio", description=__doc__.split("\n")[0])
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--n-train", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--probes", type=int, nargs="+", default=[64, 512, 1024])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for seed in args.seeds:
        probe(planted.Study(), args.strength, args.n_train, args.steps, args.probes, args.pairs, seed)


if __name__ == "__main__":
    main()
