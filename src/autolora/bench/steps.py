"""`make bench` (on a CUDA machine): the cost of our training steps next to peft's LoRA step, eager and captured.

Shapes (random init: weights do not change speed) are model@batchxlength: minilm@16x32 and minilm@16x64 (the
GLUE runs), roberta-base and gpt2-medium at 16x128 and 32x256. Per shape, under bf16 autocast, it times with
CUDA events (median over many steps after warm-up):
- the anchors: peft LoRA r=8 on q,v eager (`peft_lora`), and the same under torch.compile(mode="reduce-overhead")
  (`peft_compiled`: what a careful user could run);
- our steps, each eager and captured (engine/capture.py; `graphs` = CUDA graphs of the eager kernels, `inductor` =
  torch.compile's kernels in our CUDA graphs): `fixed_rank` (the retrain), `first_order` (eta = 0, 2 passes),
  `second_order` (forward finite difference, 3 passes, the default) and `second_order_central` (4 passes).
Every step includes what the loops do: the hypergradient, both AdamW updates, clipping and the schedule.
Warm-up (compilation, capture) is timed separately. Also peak memory, tokens/s and model FLOP utilisation.
Then (bench.tables) per step an `auto` row, the mode compile=auto picks for a run of the task's default length
(`steps`), every row's total (warm-up + steps x ms), the ratios to peft's compiled step (headline) and eager
step, and issue #28's checks. The default modes time all three, so auto's pick is always timed.
Writes OUT.json and OUT.md; --profile adds OUT_profile.txt (top CUDA kernels).

    python -m autolora.bench.steps [--steps 30] [--warmup 5] [--out results/bench]
    python -m autolora.bench.steps --shapes minilm@16x32 --modes eager graphs --out /tmp/bench
    python -m autolora.bench --steps 20 --warmup 3 --out results/bench    # issue #28's rows, six shapes
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    get_linear_schedule_with_warmup,
)

from autolora.bench import tables
from autolora.engine import capture
from autolora.layout import config_dir
from autolora.method.inject import inject
from autolora.method.search import SearchConfig, forward_loss, search_update, start_search
from autolora.method.train import RetrainConfig, model_loss, train_step
from autolora.models.runtime import four_d_attention_mask, store_frozen_linears_in
from autolora.models.targets import TargetConfig, target_names
from autolora.provenance import git_commit, versions

SHAPES = {
    "minilm": dict(kind="encoder", targets=TargetConfig(("query", "value"), (), ()), peft_targets=["query", "value"]),
    "roberta-base": dict(kind="encoder", targets=TargetConfig(("query", "value"), (), ()),
                         peft_targets=["query", "value"]),
    "gpt2-medium": dict(kind="decoder", targets=TargetConfig(("c_attn",), ("q", "k", "v"), ("q", "v")),
                        peft_targets=["c_attn"])}
DEFAULT_SHAPES = ["minilm@16x32", "minilm@16x64", "roberta-base@16x128", "roberta-base@32x256",
                  "gpt2-medium@16x128", "gpt2-medium@32x256"]
OURS = {"fixed_rank": None, "first_order": ("forward", 0.0), "second_order": ("forward", 1e-4),
        "second_order_central": ("central", 1e-4)}  # search steps: (search.fd, eta)
assert tuple(OURS) == tables.OURS, "the cost table (engine/step_costs.py) names the same steps"
PASSES = {"peft_lora": 1, "peft_compiled": 1, "fixed_rank": 1, "first_order": 2, "second_order": 3,
          "second_order_central": 4}  # forward/backward passes per step
MODES = ("eager", "graphs", "inductor")
CUDA_BF16 = functools.partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)  # every timed step
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 datasheet peaks


def build(name: str) -> torch.nn.Module:
    """Random-init model with the named architecture's shapes, eval-free dropout defaults kept."""
    torch.manual_seed(0)
    if name == "minilm":  # all-MiniLM-L6-v2's shapes: the model of the GLUE runs in results/glue_minilm.md
        return BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
            intermediate_size=1536, num_labels=2, attn_implementation="sdpa"))
    if name == "roberta-base":
        return RobertaForSequenceClassification(RobertaConfig(num_labels=2, attn_implementation="sdpa"))
    return GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16, attn_implementation="sdpa"))


def batch_for(name: str, batch: int, length: int, seed: int, device) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 30000, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    out = {"input_ids": ids, "attention_mask": four_d_attention_mask(
        mask, causal=SHAPES[name]["kind"] == "decoder", attn_implementation="sdpa")}
    out["labels"] = torch.randint(0, 2, (batch,), generator=gen) if SHAPES[name]["kind"] == "encoder" else ids
    return {k: v.to(device) for k, v in out.items()}


def train_val(name: str, batch: int, length: int, device) -> tuple[dict, dict]:
    """The fixed training and validation batches every variant of a shape steps on."""
    return batch_for(name, batch, length, 0, device), batch_for(name, batch, length, 1, device)


def task_loss(name: str) -> Callable:
    if SHAPES[name]["kind"] == "encoder":
        return lambda out, b: F.cross_entropy(out.logits.float(), b["labels"])
    return lambda out, b: F.cross_entropy(out.logits[:, :-1].float().flatten(0, 1), b["labels"][:, 1:].flatten())


def search_cfg(fd: str, eta: float) -> SearchConfig:
    return SearchConfig(k=8, alpha_norm="softmax", hypergrad="fd", fd=fd, eta=eta, fd_eps=0.01, lr=1e-4,
                        alpha_lr=1e-3, weight_decay=0.01, alpha_weight_decay=0.0, warmup_ratio=0.06, epochs=1,
                        batch_size=1, val_fraction=0.5, lora_alpha=16, dropout=0.1, threshold=None, min_rank=0,
                        max_grad_norm=1.0, ranks_file=None, evaluate=False)


RETRAIN = RetrainConfig(epochs=1, lr=1e-4, weight_decay=0.01, warmup_ratio=0.06, batch_size=1, lora_alpha=16,
                        dropout=0.1, max_grad_norm=1.0)
TOTAL_STEPS = 10_000  # the schedule's length: warm-up then linear decay, as in the loops


@dataclass
class Variant:
    """A timed step: `step()` runs one whole training step; `stream` is the context the loop runs it in."""

    step: Callable[[], None]
    stream: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    captured: capture.CapturedStep | None = None


def peft_variant(name: str, compiled: bool, batch, autocast, device) -> Variant:
    """peft LoRA r=8 on q,v (plus the head), AdamW with the linear schedule; compiled: torch.compile
    (mode reduce-overhead: inductor kernels in CUDA graphs) of the model's forward and backward."""
    from peft import LoraConfig, get_peft_model

    encoder = SHAPES[name]["kind"] == "encoder"
    model = get_peft_model(build(name), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                                   modules_to_save=["classifier"] if encoder else None,
                                                   target_modules=SHAPES[name]["peft_targets"],
                                                   fan_in_fan_out=not encoder))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(0.06 * TOTAL_STEPS), TOTAL_STEPS)
    forward = torch.compile(model, mode="reduce-overhead") if compiled else model
    inputs, loss_fn = {k: v for k, v in batch.items() if k != "labels"}, task_loss(name)

    def step():
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast():
            out = forward(**inputs)
        loss_fn(out, batch).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    return Variant(step)


def our_variant(name: str, which: str, mode: str, batch, val_batch, autocast, device) -> Variant:
    """Our step as the loops run it (train.train_step / search.search_update, then the schedule), eager or
    captured (capture.CapturedStep; inductor: the loss compiled by torch.compile first)."""
    model = build(name)
    encoder = SHAPES[name]["kind"] == "encoder"
    targets, heads = SHAPES[name]["targets"], (["classifier"] if encoder else [])
    searching = OURS[which] is not None
    inject(model, targets, {n: 8 for n in target_names(model, targets)}, lora_alpha=16, dropout=0.1,
           alpha_norm="softmax" if searching else None, trainable_modules=heads)
    model.to(device).train()
    store_frozen_linears_in(model, torch.bfloat16)  # as the pipeline does under bf16 autocast (Job.ready_to_train)
    compile_mode = "off" if mode == "eager" else mode
    loss_fn = task_loss(name)
    if searching:
        cfg = search_cfg(*OURS[which])
        state = start_search(model, cfg, TOTAL_STEPS)
        loss = capture.compiled(forward_loss(model, loss_fn, autocast), compile_mode)
        update = capture.make_step(lambda tr, val: search_update(state, tr, val, cfg, loss), compile_mode,
                                  state.streams.generators)
        schedule, args = state.schedule, (batch, val_batch)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = capture.adamw(params, lr=RETRAIN.lr, weight_decay=RETRAIN.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(0.06 * TOTAL_STEPS), TOTAL_STEPS)
        loss_of = capture.compiled(model_loss(model, loss_fn, autocast), compile_mode)
        update = capture.make_step(lambda b: train_step(model, params, optimizer, b, RETRAIN, loss_fn, autocast,
                                                       loss_of=loss_of), compile_mode)
        args = (batch,)

    def step():
        update(*args)
        schedule.step()

    return Variant(step, functools.partial(capture.loop_stream, update),
                   update if isinstance(update, capture.CapturedStep) else None)


def variant(name: str, which: str, mode: str, batch, val_batch, autocast, device) -> Variant:
    """The step of one variant, with its model and optimiser built on the device."""
    if which.startswith("peft"):
        return peft_variant(name, which == "peft_compiled", batch, autocast, device)
    return our_variant(name, which, mode, batch, val_batch, autocast, device)


def time_steps(variant: Variant, steps: int, warmup: int) -> dict:
    """Median ms and spread (max - min of the middle half) over `steps` timed steps, after `warmup` steps whose
    wall time (compilation, capture) is reported as warmup_s; peak memory over warm-up and steps (a CUDA graph
    allocates its private pool while it is captured; a peak taken after warm-up would miss it)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()  # before warm-up: a captured step allocates its graph's memory pool there
    with variant.stream():
        started = time.perf_counter()
        for _ in range(warmup):
            variant.step()
        torch.cuda.synchronize()
        warmup_s = time.perf_counter() - started
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        for start, end in zip(starts, ends, strict=True):
            start.record()
            variant.step()
            end.record()
        torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))
    middle = times[len(times) // 4 : 3 * len(times) // 4 + 1]
    out = {"ms": round(statistics.median(times), 3), "spread_ms": round(middle[-1] - middle[0], 3),
           "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1), "warmup_s": round(warmup_s, 2)}
    if variant.captured is not None:
        out["capture"] = variant.captured.stats.as_dict()
    return out


def flops_per_pass(model_name: str, batch: int, length: int) -> float:
    """Forward + activation-gradient backward FLOPs of one pass over the frozen backbone (LoRA adds <1%):
    4 * non-embedding params * tokens (2 forward + 2 backward) + attention scores and values, same factor."""
    hidden, layers = {"minilm": (384, 6), "roberta-base": (768, 12), "gpt2-medium": (1024, 24)}[model_name]
    params = 12 * hidden * hidden * layers  # qkv + out (4h^2) + MLP (8h^2) per layer
    attention = 4 * batch * length * length * hidden * layers  # QK^T and AV, forward
    return 2 * (2 * params * batch * length + attention)


def parse_shape(text: str) -> tuple[str, int, int]:
    """'minilm@16x32' -> ('minilm', 16, 32), for --shapes."""
    model, _, size = text.partition("@")
    try:
        batch, length = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL@BATCHxLENGTH such as minilm@16x32, got {text!r}") from None
    if model not in SHAPES:
        raise argparse.ArgumentTypeError(f"unknown model {model!r} in {text!r}; choose from {', '.join(SHAPES)}")
    return model, batch, length


def variant_names(modes: list[str], kinds: Sequence[str] = tuple(OURS)) -> list[tuple[str, str]]:
    """(step, mode) pairs to time: both anchors, then each of our step kinds in each mode."""
    return [("peft_lora", "eager"), ("peft_compiled", "inductor")] + [(w, m) for w in kinds for m in modes]


def run_steps(name: str, batch: int, override: int | None = None) -> dict[str, int]:
    """The steps of the run compile=auto is asked about at this shape (tables.RUNS: the model's task at its
    default epochs, conf/task/), per step kind; `override`: that many steps for every kind (--auto-steps)."""
    if override is not None:
        return {which: override for which in OURS}
    task, rows = tables.RUNS[name]
    defaults = yaml.safe_load((config_dir() / "task" / f"{task}.yaml").read_text())
    return tables.assumed_steps(rows, defaults["search_epochs"], defaults["retrain_epochs"], batch)


def run_bench(steps: int, warmup: int, shapes: list[tuple[str, int, int]], modes: list[str],
              inductor_shapes: list[tuple[str, int, int]], save: Callable[[dict], None],
              auto_steps: int | None = None, kinds: Sequence[str] = tuple(OURS)) -> dict:
    """Time every variant at every shape (plus mode inductor at `inductor_shapes`), then add the auto rows,
    totals, ratios and checks (bench.tables); `save` gets the report after each shape, so that a run stopped
    early keeps what it measured."""
    device, autocast = torch.device("cuda"), CUDA_BF16
    gpu = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    results = {}
    for name, batch, length in shapes:
        key = f"{name}@{batch}x{length}"
        train, val = train_val(name, batch, length, device)
        entry = {}
        shape_modes = modes + (["inductor"] if (name, batch, length) in inductor_shapes and "inductor" not in modes
                               else [])
        for which, mode in variant_names(shape_modes, kinds):
            label = which if which.startswith("peft") else f"{which}/{mode}"
            timed = time_steps(variant(name, which, mode, train, val, autocast, device), steps, warmup)
            useful = flops_per_pass(name, batch, length) * PASSES[which]
            timed.update(tokens_per_s=round(batch * length / timed["ms"] * 1e3),
                         mfu=None if peak is None else round(useful / (timed["ms"] * 1e-3) / (peak * 1e12), 4))
            entry[label] = timed
            torch.cuda.empty_cache()
            print(f"{key:22} {label:30} {timed['ms']:8.2f} ms  ±{timed['spread_ms']:5.2f}  "
                  f"{timed['peak_mib']:8.0f} MiB  warm-up {timed['warmup_s']:.1f} s", flush=True)
        entry.update(tables.auto_rows(entry, name, batch, length, run_steps(name, batch, auto_steps)))
        entry["ratios"] = tables.ratios(entry, [*shape_modes, "auto"])
        entry["checks"] = tables.checks(entry)
        results[key] = entry
        report = {"device": gpu, "peak_bf16_tflops": peak, "steps": steps, "warmup": warmup,
                  "modes": sorted({m for e in results.values() for m in e["ratios"] if m != "peft_compiled"},
                                  key=[*MODES, "auto"].index), "shapes": results}
        save(report)
    return report


def profile_text(name: str, batch: int, length: int, variants: list[tuple[str, str]], steps: int = 5) -> str:
    """torch.profiler tables (top CUDA kernels) of each (step, mode)'s steps after warm-up."""
    from torch.profiler import ProfilerActivity, profile

    device, autocast = torch.device("cuda"), CUDA_BF16
    train, val = train_val(name, batch, length, device)
    parts = []
    for which, mode in variants:
        timed = variant(name, which, mode, train, val, autocast, device)
        with timed.stream():
            for _ in range(3):
                timed.step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    timed.step()
                torch.cuda.synchronize()
        parts.append(f"== {which} ({mode}) on {name} {batch}x{length}, {steps} steps ==\n"
                     + prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
        del timed
        torch.cuda.empty_cache()
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES],
                        metavar="MODEL@BxL", help=f"default: {' '.join(DEFAULT_SHAPES)}")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="how our steps run")
    parser.add_argument("--kinds", nargs="+", choices=list(OURS), default=list(OURS),
                        help="our step kinds to time (default: all; issue #28's bar needs fixed_rank second_order)")
    parser.add_argument("--inductor-shapes", nargs="*", type=parse_shape, default=[], metavar="MODEL@BxL",
                        help="also time mode inductor at these shapes (when --modes leaves it out)")
    parser.add_argument("--auto-steps", type=int, default=None, metavar="N",
                        help="the run length the auto rows assume (default: the model's task at its default epochs)")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--profile", nargs="*", default=None, metavar="STEP/MODE",
                        help="also write OUT_profile.txt for these steps (e.g. second_order/graphs peft_lora/eager) "
                        "at the last shape; no value: second_order/eager and peft_lora/eager")
    parser.add_argument("--profile-only", action="store_true", help="write OUT_profile.txt and time nothing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("make bench needs a CUDA device (run it through the device tool)")
    command = "python -m autolora.bench.steps " + " ".join(sys.argv[1:] if argv is None else argv)
    try:  # before any GPU time is spent
        tables.check_out(args.out)
    except ValueError as err:
        parser.error(str(err))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.profile is not None or args.profile_only:
        profiled = [tuple(v.split("/")) for v in (args.profile or ["second_order/eager", "peft_lora/eager"])]
    if not args.profile_only:
        provenance = dict(command=command, commit=args.commit or git_commit(), date=dt.date.today().isoformat(),
                          versions=versions())

        def save(report: dict) -> None:  # after each shape: a bench cut off midway keeps the shapes it timed
            report.update(provenance)
            tables.save(args.out, report)

        print(tables.markdown(run_bench(args.steps, args.warmup, args.shapes, args.modes, args.inductor_shapes,
                                        save, args.auto_steps, args.kinds)))
    if args.profile is not None or args.profile_only:  # after the timing, so that profiling cannot disturb it
        name, batch, length = args.shapes[-1]
        args.out.with_name(args.out.name + "_profile.txt").write_text(profile_text(name, batch, length, profiled))


if __name__ == "__main__":
    main()
