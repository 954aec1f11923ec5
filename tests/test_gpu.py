"""On a CUDA device: the search step never waits for the GPU, and bf16 autocast keeps the second-order term."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import GPT2_TARGETS, ROBERTA_TARGETS, tiny_gpt2, tiny_roberta, token_batch
from method.test_search import search_config  # tests/ is on sys.path (conftest.py)

from autolora.method import hypergrad
from autolora.method.inject import inject, split_params
from autolora.method.search import batch_loss, forward_loss, search_step, start_search
from autolora.models.runtime import four_d_attention_mask
from autolora.models.targets import target_names

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

    def losses(autocast):  # eval mode: no dropout, so no mask streams are needed
        loss, same = forward_loss(model, _loss("roberta"), autocast), lambda _: contextlib.nullcontext()
        return batch_loss(loss, tr, same), batch_loss(loss, val, same)

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


# ---- captured steps (engine/capture.py) ----------------------------------------------------------------------------

def _captured_search(kind: str, cfg, mode: str = "graphs", seed: int = 0, dropout: float = 0.1):
    """A tiny model with search layers (dropout on), its search state and the loop's step function."""
    from autolora.engine import capture
    from autolora.method.search import forward_loss, search_update

    model = tiny_roberta(seed=seed) if kind == "roberta" else tiny_gpt2(seed=seed)
    model.config._attn_implementation = "sdpa"
    for module in model.modules():  # tiny models ship without dropout: the masks are what is being tested
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
    targets = ROBERTA_TARGETS if kind == "roberta" else GPT2_TARGETS
    torch.manual_seed(seed)
    inject(model, targets, {n: 8 for n in target_names(model, targets)}, lora_alpha=16, dropout=dropout,
           alpha_norm="softmax", trainable_modules=["classifier"] if kind == "roberta" else [])
    model.to(CUDA).train()
    state = start_search(model, cfg, total_steps=100)
    loss = capture.compiled(forward_loss(model, _loss(kind), BF16), mode)
    step = capture.make_step(lambda tr, val: search_update(state, tr, val, cfg, loss), mode, state.streams.generators)
    return model, state, step


@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
@pytest.mark.parametrize("eta", [0.0, 1e-3])
def test_captured_search_step_never_synchronises(kind, eta):
    """After warm-up and capture, replayed search steps (and the schedule between them) never wait for the GPU."""
    from autolora.engine import capture

    torch.manual_seed(0)
    _, state, step = _captured_search(kind, search_config(eta=eta, max_grad_norm=1.0, fd="forward"))
    batches = [(_batch(kind, "sdpa", 2 * i), _batch(kind, "sdpa", 2 * i + 1)) for i in range(5)]
    with capture.loop_stream(step):
        for tr, val in batches[:2]:  # eager warm-up, then the capture
            step(tr, val)
            state.schedule.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            losses = []
            for tr, val in batches[2:]:
                losses.append(step(tr, val))
                state.schedule.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert step.stats.graphs == 1 and torch.isfinite(torch.stack(losses)).all()


@pytest.mark.parametrize("fd", ["forward", "central"])
def test_captured_and_eager_search_agree_after_20_steps(fd, capsys):
    """The captured search and the eager one (same fused AdamW, same graph-safe dropout streams) end 20 steps
    with the same gates, within what two eager runs differ by (GPU kernels need not be bitwise repeatable),
    and the same ranks."""
    from autolora.engine import capture
    from autolora.method.inject import gates
    from autolora.method.ranks import select_ranks

    cfg = search_config(eta=0.5, alpha_lr=3e-2, lr=1e-2, max_grad_norm=1.0, fd=fd)
    batches = [(_batch("roberta", "sdpa", 2 * i), _batch("roberta", "sdpa", 2 * i + 1)) for i in range(20)]
    results = {}
    for mode in ("off", "graphs", "off again"):
        torch.manual_seed(0)
        model, state, step = _captured_search("roberta", cfg, mode.split()[0])
        with capture.loop_stream(step):
            for tr, val in batches:
                step(tr, val)
                state.schedule.step()
        with torch.no_grad():
            results[mode] = {n: g.float().cpu() for n, g in gates(model).items()}
    off = results["off"]
    moved = max(float((g - 1 / 8).abs().max()) for g in off.values())
    worst, repeat = (max(float((off[n] - results[other][n]).abs().max()) for n in off)
                     for other in ("graphs", "off again"))
    with capsys.disabled():
        print(f"\n[{fd}] gates moved up to {moved:.2e} from 1/k; captured vs eager differ by at most {worst:.2e}, "
              f"eager vs eager by {repeat:.2e}")
    assert moved > 1e-3  # the comparison means something
    assert worst <= max(2 * repeat, 1e-5)
    as_lists = {mode: {n: g.tolist() for n, g in r.items()} for mode, r in results.items()}
    assert select_ranks(as_lists["off"], 1 / 8) == select_ranks(as_lists["graphs"], 1 / 8)


def test_every_pass_of_a_captured_step_draws_the_same_masks():
    """Inside one CUDA graph the train evaluations draw identical dropout masks, the next replay new ones, the
    validation stream its own; eager use of a same-seeded set of states draws the very same masks."""
    from autolora.engine.rng import TRAIN_PASSES, GraphSafeStates

    x = torch.ones(4096, device=CUDA)

    def draws(streams):
        outs = []
        for i in range(TRAIN_PASSES):
            with streams.train(i):
                outs.append(F.dropout(x, 0.5))
        with streams.val():
            outs.append(F.dropout(x, 0.5))
        return torch.stack(outs)

    captured, eager = GraphSafeStates(CUDA, 7), GraphSafeStates(CUDA, 7)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        draws(GraphSafeStates(CUDA, 1))  # warm-up
        graph = torch.cuda.CUDAGraph()
        for generator in captured.generators:
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph, stream=side):
            static = draws(captured)
        replays = []
        for _ in range(2):
            graph.replay()
            replays.append(static.clone())
    torch.cuda.current_stream().wait_stream(side)
    for out in replays:
        assert all(torch.equal(out[0], out[i]) for i in range(1, TRAIN_PASSES))
        assert not torch.equal(out[0], out[-1])
    assert not torch.equal(replays[0][0], replays[1][0])
    for out in replays:
        assert torch.equal(out, draws(eager))


@pytest.mark.parametrize("mode", ["graphs", "inductor"])
def test_no_capture_or_compile_after_warm_up(mode):
    """Over two batch shapes, the first round warms up and captures; later rounds replay: no new graph and no
    new compilation (CaptureStats counts both)."""
    from autolora.engine import capture

    torch.manual_seed(0)
    _, state, step = _captured_search("roberta", search_config(eta=1e-3, fd="forward"), mode)
    short = [(_batch("roberta", "sdpa", i), _batch("roberta", "sdpa", 100 + i)) for i in range(3)]
    long = []
    for i in range(3):
        tr, val = token_batch(8, 32, seed=200 + i), token_batch(8, 32, seed=300 + i)
        for b in (tr, val):
            b["attention_mask"] = four_d_attention_mask(b["attention_mask"], causal=False, attn_implementation="sdpa")
            b["labels"] = torch.arange(8) % 2
        long.append(({k: v.to(CUDA) for k, v in tr.items()}, {k: v.to(CUDA) for k, v in val.items()}))
    with capture.loop_stream(step):
        for rounds in range(3):
            for tr, val in (short[rounds], long[rounds]):
                step(tr, val)
                state.schedule.step()
            if rounds == 1:
                after_warm_up = step.stats.as_dict()
    assert after_warm_up["graphs"] == 2 and step.stats.as_dict() == after_warm_up
    assert (after_warm_up["compiles"] > 0) == (mode == "inductor")


def test_captured_retrain_loop_matches_the_eager_one():
    """train() with compile_mode=graphs logs losses within bf16 tolerance of the eager loop on the same data."""
    from autolora.engine.loop import Loop
    from autolora.method.train import RetrainConfig, train

    batches = [_batch("roberta", "sdpa", i) for i in range(12)]
    logged = {}
    for mode in ("off", "graphs"):
        torch.manual_seed(0)
        model = tiny_roberta()
        model.config._attn_implementation = "sdpa"
        inject(model, ROBERTA_TARGETS, {n: 4 for n in target_names(model, ROBERTA_TARGETS)}, lora_alpha=8,
               dropout=0.0, alpha_norm=None, trainable_modules=["classifier"])
        model.to(CUDA)
        records = []
        cfg = RetrainConfig(epochs=2, lr=1e-2, weight_decay=0.01, warmup_ratio=0.1, batch_size=8, lora_alpha=8,
                            dropout=0.0, max_grad_norm=1.0)
        trained = train(model, [{k: v.cpu() for k, v in b.items()} for b in batches], cfg,
                        compute_loss=_loss("roberta"), seed=0,
                        loop=Loop(CUDA, autocast=BF16, log=lambda r, s, out=records: out.append(r["train_loss"]),
                                  log_every=4, progress=False, compile_mode=mode))
        logged[mode] = records
        assert (trained.capture is None) == (mode == "off")
    torch.testing.assert_close(torch.tensor(logged["graphs"]), torch.tensor(logged["off"]), rtol=2e-2, atol=2e-3)


def test_the_pipeline_runs_captured_on_the_gpu(tmp_path):
    """debug=tiny on CUDA with compile=auto: both phases run captured and metrics.json says what capture cost."""
    import json

    from conftest import compose

    from autolora.runner.pipeline import execute

    execute(compose("debug=tiny", "device=cuda", "data.max_train_samples=64", "search.epochs=3", "retrain.epochs=3"),
        tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["compile"] == {"search": "graphs", "retrain": "graphs"}
    for phase in ("search", "retrain"):
        assert metrics[phase]["capture"]["graphs"] >= 1, metrics[phase]["capture"]


def test_mpnet_runs_captured_on_the_gpu(tmp_path):
    """A tiny random MPNet (no SDPA attention: eager) with compile=auto: both phases captured. Before
    models.runtime.cache_position_bias, transformers < 5.18 copied MPNet's position buckets from the host in
    every forward pass, which capture refused (the 2026-12-07 H100 traceback)."""
    import json

    from conftest import compose

    from autolora.runner.pipeline import execute

    execute(compose("debug=tiny", "device=cuda", "model.name=tiny-mpnet", "model.config.model_type=mpnet",
                    "model.targets.modules=[q,v]", "data.max_train_samples=64", "search.epochs=3",
                    "retrain.epochs=3"), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["compile"] == {"search": "graphs", "retrain": "graphs"}, metrics["compile_reason"]
    for phase in ("search", "retrain"):
        assert metrics[phase]["capture"]["graphs"] >= 1, metrics[phase]["capture"]
