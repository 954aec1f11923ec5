"""The alternating search loop: a toy where the answer is known, and the dropout replay of batch_loss."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import ROBERTA_TARGETS, tiny_roberta, token_batch
from torch import nn

from autolora.engine.loop import Loop
from autolora.engine.rng import ReplayedSeed
from autolora.method.inject import inject
from autolora.method.layers import PartSpec, SelectableLoRA
from autolora.method.ranks import select_ranks
from autolora.method.search import SearchConfig, batch_loss, forward_loss, search
from autolora.models.targets import WHOLE, target_names

D = K = 8

CPU = torch.device("cpu")


def search_config(**overrides) -> SearchConfig:
    """Explicit values for every field (library code has no hidden defaults)."""
    values = dict(k=K, alpha_norm="softmax", hypergrad="fd", fd="central", eta=0.01, fd_eps=0.01, lr=1e-2,
                  alpha_lr=5e-2,
                  weight_decay=0.0, alpha_weight_decay=0.0, warmup_ratio=0.0, epochs=30, batch_size=16,
                  val_fraction=0.5, lora_alpha=K, dropout=0.0, threshold=None, min_rank=0, max_grad_norm=None,
                  ranks_file=None, evaluate=False)
    return SearchConfig(**{**values, **overrides})


class TwoBranches(nn.Module):
    """prediction = useful(signal) + useless(noise): only the first branch can explain the target."""

    def __init__(self, alpha_norm: str):
        super().__init__()

        def branch() -> SelectableLoRA:
            base = nn.Linear(D, D, bias=False)
            nn.init.zeros_(base.weight)
            base.weight.requires_grad_(False)
            return SelectableLoRA(base, [PartSpec(WHOLE, 0, D, K)], lora_alpha=K, dropout=0.0, alpha_norm=alpha_norm)

        self.useful, self.useless = branch(), branch()

    def forward(self, signal, noise):
        return self.useful(signal) + self.useless(noise)


def _split(n: int, gen, mixing) -> list[dict]:
    signal, noise = torch.randn(n, D, generator=gen), torch.randn(n, D, generator=gen)
    labels = signal @ mixing + 0.1 * torch.randn(n, D, generator=gen)
    return [{"signal": signal[i:i + 16], "noise": noise[i:i + 16], "labels": labels[i:i + 16]} for i in range(0, n, 16)]


@pytest.mark.parametrize("alpha_norm", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_layer_that_cannot_help_ends_with_a_lower_rank(alpha_norm, seed):
    """Target = orthogonal map of `signal` (needs every direction); `noise` is independent of it.
    After the second-order search, the noise branch's rank is below the signal branch's."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mixing = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]
    train, val = _split(64, gen, mixing), _split(64, gen, mixing)
    model = TwoBranches(alpha_norm)
    cfg = search_config(alpha_norm=alpha_norm)
    gates = search(model, train, val, cfg, compute_loss=lambda out, batch: F.mse_loss(out, batch["labels"]),
                   seed=0,
                   loop=Loop(CPU, log=lambda record, step: None, log_every=100, progress=False)).gates
    found = select_ranks(gates, cfg.selection_threshold)
    assert found["useless"] < found["useful"], (found, gates)


def test_batch_loss_replays_dropout_masks():
    """In train mode with dropout, every evaluation of a batch_loss within one step gives the same value
    (so W, W+ and W- see the same masks), while the next step (new_step) draws new masks."""
    model = tiny_roberta()
    inject(model, ROBERTA_TARGETS, {n: 4 for n in target_names(model, ROBERTA_TARGETS)}, lora_alpha=8,
           dropout=0.5, alpha_norm="softmax", trainable_modules=["classifier"])
    with torch.no_grad():  # B away from zero, so that LoRA dropout changes the output
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_()
    model.train()
    batch = {**token_batch(4, 9), "labels": torch.tensor([0, 1, 0, 1])}
    params = dict(model.named_parameters())

    def ce(out, b):
        return F.cross_entropy(out.logits, b["labels"])

    streams, on_batch = ReplayedSeed(torch.device("cpu")), forward_loss(model, ce, contextlib.nullcontext)
    streams.new_step()
    loss = batch_loss(on_batch, batch, streams.train)
    first, second, third = loss(params), loss(params), loss(params)
    assert torch.equal(first, second) and torch.equal(first, third)
    streams.new_step()
    assert not torch.equal(first, batch_loss(on_batch, batch, streams.train)(params))


def test_search_needs_alpha_and_logs_entropies():
    """A model without search layers is refused; the log records losses and one entropy per matrix."""
    model = TwoBranches("softmax")
    gen = torch.Generator().manual_seed(0)
    data = _split(32, gen, torch.eye(D))
    records = []
    search(model, data, data, search_config(epochs=1), compute_loss=lambda out, b: F.mse_loss(out, b["labels"]),
           seed=0,
                   loop=Loop(CPU, log=lambda r, s: records.append((s, r)), log_every=1, progress=False))
    assert [step for step, _ in records] == [1, 2]
    assert {"train_loss", "val_loss", "alpha_entropy/useful", "alpha_entropy/useless"} <= set(records[0][1])
    plain = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no alpha"):
        search(plain, data, data, search_config(), compute_loss=None, seed=0,
               loop=Loop(CPU, log_every=1, progress=False))


@pytest.mark.parametrize("overrides", [dict(hypergrad="fd"), dict(fd="forward"), dict(hypergrad="exact"),
                                       dict(eta=0.0)], ids=["fd", "fd_forward", "exact", "first_order"])
def test_the_loop_runs_every_hypergradient_method(overrides):
    """search() in one process takes each method (exact refuses only a data-parallel mean) and moves alpha."""
    model = TwoBranches("softmax")
    data = _split(32, torch.Generator().manual_seed(0), torch.eye(D))
    gates = search(model, data, data, search_config(epochs=2, **overrides),
                   compute_loss=lambda out, b: F.mse_loss(out, b["labels"]), seed=0,
                   loop=Loop(CPU, log=lambda r, s: None, log_every=10, progress=False)).gates
    assert all(max(g) - min(g) > 1e-4 for g in gates.values())


@pytest.mark.parametrize("field, value, message", [
    ("k", 0, "search.k must be >= 1"), ("val_fraction", 1.0, "search.val_fraction"),
    ("threshold", 1.5, "search.threshold"), ("alpha_norm", "relu", "search.alpha_norm"),
    ("hypergrad", "neumann", "search.hypergrad"), ("fd", "backward", "search.fd"), ("min_rank", 9, "search.min_rank"),
    ("eta", -1.0, "search.eta"),
])
def test_search_config_rejects_bad_values(field, value, message):
    """Each out-of-range search value fails at construction, naming its key."""
    with pytest.raises(ValueError, match=message):
        search_config(**{field: value})


def test_a_two_step_search_is_too_short_for_the_noise_test():
    """Two steps at the paper's alpha_lr (1e-3) leave every gate within a bf16 step of 1/k: the diagnostics
    warn; the logged records carry one gate spread per matrix."""
    from autolora.method.ranks import search_diagnostics

    model = TwoBranches("softmax")
    data = _split(32, torch.Generator().manual_seed(0), torch.eye(D))
    records = []
    found = search(model, data, data, search_config(epochs=1, alpha_lr=1e-3),
                   compute_loss=lambda out, b: F.mse_loss(out, b["labels"]), seed=0,
                   loop=Loop(CPU, log=lambda r, s: records.append(r), log_every=1, progress=False))
    found, noise = found.gates, found.noise
    assert {"alpha_spread/useful", "alpha_spread/useless"} <= set(records[-1])
    assert records[-1]["alpha_spread/useful"] == pytest.approx(max(found["useful"]) - min(found["useful"]), abs=1e-7)
    diagnostics = search_diagnostics(found, 1 / K, noise)
    assert diagnostics["diagnostics"]["undecided"] == ["useful", "useless"]
    assert noise["verdict"] == "not tested" and "noise test not run" in diagnostics["warning"]


@pytest.mark.parametrize("seed", [0, 1])
def test_only_the_draw_of_a_tells_the_components_apart(seed):
    """Issue #31's lead, as a check: with every row of A the same (B starts at 0), the components of a matrix
    get the same hypergradient at every step and the gates stay at 1/k, on a task where one branch is useful;
    with A drawn at random (the default) the same search spreads them."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mixing = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]
    train, val = _split(64, gen, mixing), _split(64, gen, mixing)
    spreads = {}
    for rows in ("identical", "random"):
        torch.manual_seed(seed)
        model = TwoBranches("softmax")
        if rows == "identical":
            with torch.no_grad():
                for branch in (model.useful, model.useless):
                    for part in branch.parts.values():
                        part.A.copy_(part.A[:1].expand_as(part.A))
        gates = search(model, train, val, search_config(epochs=5),
                       compute_loss=lambda out, batch: F.mse_loss(out, batch["labels"]), seed=0,
                       loop=Loop(CPU, log=lambda record, step: None, log_every=100, progress=False)).gates
        spreads[rows] = max(max(g) - min(g) for g in gates.values())
    assert spreads["identical"] < 1e-6 < 1e-3 < spreads["random"], spreads


def test_alpha_warmup_holds_alpha_still_for_its_share_of_the_steps():
    """search.alpha_warmup = 0.5 of 40 steps: alpha equals its start after step 20 and has moved by the end; at
    0 it has moved after step 20 already; a warm-up of 1 or more is refused."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mixing = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]
    train, val = _split(64, gen, mixing), _split(64, gen, mixing)
    seen = {}
    for warmup in (0.0, 0.5):
        torch.manual_seed(0)
        model = TwoBranches("softmax")
        start = {name: part.alpha.detach().clone() for name, part in model.useful.parts.items()}
        moved = []

        def log(record, step, model=model, start=start, moved=moved):
            moved.append((step, max(float((p.alpha.detach() - start[n]).abs().max())
                                     for n, p in model.useful.parts.items())))

        search(model, train, val, search_config(epochs=10, alpha_warmup=warmup),
               compute_loss=lambda out, batch: F.mse_loss(out, batch["labels"]), seed=0,
               loop=Loop(CPU, log=log, log_every=20, progress=False))
        seen[warmup] = dict(moved)
    assert seen[0.5][20] == 0.0 and seen[0.5][40] > 0 and seen[0.0][20] > 0, seen
    with pytest.raises(ValueError, match="alpha_warmup must lie in"):
        search_config(alpha_warmup=1.0)


def test_alpha_average_makes_the_result_the_mean_of_the_last_steps_alpha():
    """search.alpha_average = 0.25 of 40 steps: the search's final alpha (and its gates) is the mean of alpha
    after steps 31..40, recorded here step by step, not the alpha of step 40."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mixing = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]
    train, val = _split(64, gen, mixing), _split(64, gen, mixing)
    model = TwoBranches("softmax")
    seen = []
    loop = Loop(CPU, log=lambda record, step: seen.append(
        (step, {n: p.alpha.detach().clone() for n, p in model.useful.parts.items()})), log_every=1, progress=False)
    result = search(model, train, val, search_config(epochs=10, alpha_average=0.25),
                    compute_loss=lambda out, batch: F.mse_loss(out, batch["labels"]), seed=0, loop=loop)
    last = dict(seen)
    for name in last[40]:
        mean = torch.stack([last[step][name] for step in range(31, 41)]).mean(0)
        assert torch.allclose(model.useful.parts[name].alpha.detach(), mean, atol=1e-6)
        assert not torch.allclose(mean, last[40][name], atol=1e-6)  # averaging changed it
        assert result.alphas["useful"] == pytest.approx(mean.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="alpha_average must lie in"):
        search_config(alpha_average=1.5)


def test_a_search_stopped_inside_its_alpha_average_resumes_to_the_same_alpha(tmp_path):
    """Stopped by SIGTERM at step 35 of 40 (alpha_average = 0.25 sums steps 31..40), then resumed from its
    checkpoint: the final alpha equals an unstopped search's, so the partial sum travelled with the checkpoint."""
    import signal

    from autolora.engine.checkpoint import Checkpointer, StopFlag
    from autolora.errors import Interrupted

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mixing = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]
    train, val = _split(64, gen, mixing), _split(64, gen, mixing)
    cfg = search_config(epochs=10, alpha_average=0.25)

    def run(checkpoint=None, log=lambda record, step: None):
        torch.manual_seed(0)
        model = TwoBranches("softmax")
        loop = Loop(CPU, log=log, log_every=5, progress=False, checkpoint=checkpoint)
        return search(model, train, val, cfg, compute_loss=lambda out, batch: F.mse_loss(out, batch["labels"]),
                      seed=0, loop=loop).alphas

    whole = run()
    stop = StopFlag()
    with pytest.raises(Interrupted, match="step 35"):
        run(Checkpointer(tmp_path, every=1000, stop=stop),
            log=lambda record, step: stop.handle(signal.SIGTERM) if step == 35 else None)
    resumed = run(Checkpointer(tmp_path, every=1000))
    assert resumed.keys() == whole.keys()
    for name in whole:
        assert resumed[name] == pytest.approx(whole[name], abs=1e-6)
