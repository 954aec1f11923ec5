"""`make bench` (on a CUDA machine): the cost of a search step next to a plain LoRA step.

For roberta-base and gpt2-medium shapes (random init: weights do not change speed) at batch x length
16x128 and 32x256 (or other --models / --sizes; minilm@16x32 is the shape of the SST-2 runs) under bf16
autocast, times four training steps with CUDA events (median over many steps after warm-up): (a) peft
LoRA r=8 on q,v, (b) this project's fixed-rank LoRA at the same ranks, (c) a first-order search step, (d) a
second-order (finite-difference) search step. Also peak memory, tokens/s and model FLOP utilisation. Writes
results/bench.json and results/bench.md; --profile adds the top CUDA kernels, --frozen-ab the bf16/fp32
frozen-weight comparison.

    python -m autolora.bench [--steps 30] [--warmup 5] [--out results/bench]
    python -m autolora.bench --models minilm --sizes 16x32 --profile --out results/bench_minilm
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from autolora.inject import TargetConfig, inject, target_names
from autolora.models import four_d_attention_mask, store_frozen_linears_in
from autolora.pipeline import git_commit, versions
from autolora.search import SearchConfig, search_step, start_search

SHAPES = {
    "minilm": dict(kind="encoder", targets=TargetConfig(("query", "value"), (), ()), peft_targets=["query", "value"]),
    "roberta-base": dict(kind="encoder", targets=TargetConfig(("query", "value"), (), ()), peft_targets=["query", "value"]),
    "gpt2-medium": dict(kind="decoder", targets=TargetConfig(("c_attn",), ("q", "k", "v"), ("q", "v")), peft_targets=["c_attn"]),
}
SIZES = [(16, 128), (32, 256)]
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


def search_cfg(eta: float) -> SearchConfig:
    return SearchConfig(k=8, alpha_norm="softmax", hypergrad="fd", fd="central", eta=eta, fd_eps=0.01, lr=1e-4, alpha_lr=1e-3,
                        weight_decay=0.01, alpha_weight_decay=0.0, warmup_ratio=0.0, epochs=1, batch_size=1,
                        val_fraction=0.5, lora_alpha=16, dropout=0.1, threshold=None, min_rank=0,
                        max_grad_norm=None, ranks_file=None, evaluate=False)


def plain_step(model, batch, loss_fn, autocast, optimizer) -> Callable[[], None]:
    """One ordinary training step (used for peft and for our fixed-rank layers)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def step():
        with autocast():
            out = model(**inputs)
        loss_fn(out, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def variant(name: str, which: str, batch, val_batch, autocast, device, bf16_frozen: bool = True) -> Callable[[], None]:
    """The step function of one variant, with its model and optimiser built on the device. bf16_frozen: the
    project's variants keep frozen weights in bf16 as the pipeline does (False: fp32, cast on every pass)."""
    model = build(name)
    loss_fn = task_loss(name)
    encoder = SHAPES[name]["kind"] == "encoder"
    targets, heads = SHAPES[name]["targets"], (["classifier"] if encoder else [])
    if which == "peft_lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, modules_to_save=heads or None,
                                                 target_modules=SHAPES[name]["peft_targets"],
                                                 fan_in_fan_out=not encoder))
        model.to(device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        return plain_step(model, batch, loss_fn, autocast, optimizer)
    names = target_names(model, targets)
    searching = which != "fixed_rank"
    inject(model, targets, {n: 8 for n in names}, lora_alpha=16, dropout=0.1,
           alpha_norm="softmax" if searching else None, trainable_modules=heads)
    model.to(device).train()
    if bf16_frozen:
        store_frozen_linears_in(model, torch.bfloat16)  # as the pipeline does under bf16 autocast (Job.ready_to_train)
    if not searching:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        return plain_step(model, batch, loss_fn, autocast, optimizer)
    cfg = search_cfg(eta=1e-4 if which == "second_order" else 0.0)
    state = start_search(model, cfg, total_steps=10_000)
    return lambda: search_step(model, state, batch, val_batch, cfg, loss_fn, autocast)


def time_steps(step: Callable[[], None], steps: int, warmup: int) -> tuple[float, float, int]:
    """(median ms, spread ms = max - min of the middle half, peak bytes) over `steps` timed steps."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    for start, end in zip(starts, ends, strict=True):
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))
    middle = times[len(times) // 4 : 3 * len(times) // 4 + 1]
    return statistics.median(times), middle[-1] - middle[0], torch.cuda.max_memory_allocated()


def flops_per_pass(model_name: str, batch: int, length: int) -> float:
    """Forward + activation-gradient backward FLOPs of one pass over the frozen backbone (LoRA adds <1%):
    4 * non-embedding params * tokens (2 forward + 2 backward) + attention scores and values, same factor."""
    hidden, layers = {"minilm": (384, 6), "roberta-base": (768, 12), "gpt2-medium": (1024, 24)}[model_name]
    params = 12 * hidden * hidden * layers  # qkv + out (4h^2) + MLP (8h^2) per layer
    attention = 4 * batch * length * length * hidden * layers  # QK^T and AV, forward
    return 2 * (2 * params * batch * length + attention)


PASSES = {"peft_lora": 1, "fixed_rank": 1, "first_order": 2, "second_order": 4}  # forward/backward passes per step


def run_bench(steps: int, warmup: int, models: list[str], sizes: list[tuple[int, int]], bf16_frozen: bool = True) -> dict:
    device, autocast = torch.device("cuda"), CUDA_BF16
    gpu = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    results = {}
    for name in models:
        for batch, length in sizes:
            key = f"{name}@{batch}x{length}"
            train, val = train_val(name, batch, length, device)
            entry = {}
            for which in ("peft_lora", "fixed_rank", "first_order", "second_order"):
                step = variant(name, which, train, val, autocast, device, bf16_frozen)
                median, spread, memory = time_steps(step, steps, warmup)
                useful = flops_per_pass(name, batch, length) * PASSES[which]
                entry[which] = {"ms": round(median, 3), "spread_ms": round(spread, 3), "peak_mib": round(memory / 2**20, 1),
                                "tokens_per_s": round(batch * length / median * 1e3),
                                "mfu": None if peak is None else round(useful / (median * 1e-3) / (peak * 1e12), 4)}
                del step
                torch.cuda.empty_cache()
                print(f"{key:24} {which:13} {median:8.2f} ms  ±{spread:5.2f}  {memory / 2**20:8.0f} MiB", flush=True)
            base = entry["peft_lora"]
            entry.update({
                "second_order_ratio": round(entry["second_order"]["ms"] / base["ms"], 3),
                "first_order_ratio": round(entry["first_order"]["ms"] / base["ms"], 3),
                "fixed_rank_ratio": round(entry["fixed_rank"]["ms"] / base["ms"], 3),
                "memory_ratio": round(entry["second_order"]["peak_mib"] / base["peak_mib"], 3),
            })
            results[key] = entry
    return {"device": gpu, "peak_bf16_tflops": peak, "steps": steps, "warmup": warmup, "bf16_frozen": bf16_frozen,
            "shapes": results}


def frozen_dtype_ab(models: list[str], sizes: list[tuple[int, int]], steps: int, warmup: int, rounds: int) -> dict:
    """A/B of models.store_frozen_linears_in: per shape, the project's fixed-rank and second-order steps with
    frozen weights stored in bf16 and in fp32, next to peft's step. All are built first, then timed in
    `rounds` interleaved rounds, so that the drift of a host-bound machine hits every variant alike; each
    entry is the median over rounds of the per-round median (ms)."""
    device, autocast = torch.device("cuda"), CUDA_BF16
    results = {}
    for name in models:
        for batch, length in sizes:
            train, val = train_val(name, batch, length, device)
            step_of = {"peft_lora": variant(name, "peft_lora", train, val, autocast, device)}
            for which in ("fixed_rank", "second_order"):
                for frozen in ("bf16", "fp32"):
                    step_of[f"{which}/{frozen}"] = variant(name, which, train, val, autocast, device, frozen == "bf16")
            times: dict[str, list[float]] = {key: [] for key in step_of}
            for _ in range(rounds):
                for key, step in step_of.items():
                    times[key].append(time_steps(step, steps, warmup)[0])
            key = f"{name}@{batch}x{length}"
            results[key] = {k: round(statistics.median(v), 3) for k, v in times.items()}
            print(key, "  ".join(f"{k} {v:.2f}" for k, v in results[key].items()), flush=True)
            del step_of
            torch.cuda.empty_cache()
    return results


def profile_text(name: str = "roberta-base", batch: int = 32, length: int = 256, steps: int = 5,
                 bf16_frozen: bool = True, variants: tuple[str, ...] = ("second_order", "peft_lora")) -> str:
    """torch.profiler tables (top CUDA kernels) of each variant's step (default: second order and peft LoRA)."""
    from torch.profiler import ProfilerActivity, profile

    device, autocast = torch.device("cuda"), CUDA_BF16
    train, val = train_val(name, batch, length, device)
    parts = []
    for which in variants:
        step = variant(name, which, train, val, autocast, device, bf16_frozen)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        parts.append(f"== {which} on {name} {batch}x{length}, {steps} steps ==\n"
                     + prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
        del step
        torch.cuda.empty_cache()
    return "\n\n".join(parts) + "\n"


def markdown(report: dict, commit: str, command: str) -> str:
    """results/bench.md: provenance, the targets, one table per shape."""
    lines = ["# Search-step cost (make bench)", "",
             f"- command: `{command}`", f"- commit: {commit}", f"- device: {report['device']}",
             f"- date: {report['date']}", f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
             f"- timing: median of {report['steps']} steps after {report['warmup']} warm-up steps, CUDA events; "
             "bf16 autocast; random-init weights; the same batch every step; 4D boolean attention masks for every variant",
             "- MFU: analytic FLOPs (4 x non-embedding params x tokens + attention, per forward/backward pass; passes per "
             "step: LoRA 1, first order 2, second order 4) over the datasheet dense bf16 peak",
             "- frozen weights of the project's steps (fixed_rank, first_order, second_order): "
             + ("bf16, stored once (models.store_frozen_linears_in, as the pipeline does); peft's step keeps "
                "its fp32 weights, cast by autocast on every pass" if report.get("bf16_frozen", False)
                else "fp32, cast by autocast on every pass (like peft's)"), "",
             "| shape | step | ms | spread ms | peak MiB | tokens/s | MFU | ratio vs peft |", "|---|---|---|---|---|---|---|---|"]
    for key, entry in report["shapes"].items():
        base = entry["peft_lora"]["ms"]
        for which in ("peft_lora", "fixed_rank", "first_order", "second_order"):
            e = entry[which]
            lines.append(f"| {key} | {which} | {e['ms']:.2f} | {e['spread_ms']:.2f} | {e['peak_mib']:.0f} | "
                         f"{e['tokens_per_s']:,} | {e['mfu'] if e['mfu'] is not None else 'n/a'} | {e['ms'] / base:.2f}x |")
    lines += ["", "| shape | second_order_ratio (<= 2.5) | first_order_ratio (<= 1.5) | fixed_rank_ratio (<= 1.05) | "
              "memory_ratio (<= 1.5) |", "|---|---|---|---|---|"]
    for key, entry in report["shapes"].items():
        lines.append(f"| {key} | {entry['second_order_ratio']} | {entry['first_order_ratio']} | "
                     f"{entry['fixed_rank_ratio']} | {entry['memory_ratio']} |")
    return "\n".join(lines) + "\n"


def size(text: str) -> tuple[int, int]:
    """'16x128' -> (16, 128), for --sizes."""
    try:
        batch, length = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxLENGTH such as 16x128, got {text!r}") from None
    return batch, length


def write_profile(args: argparse.Namespace) -> None:
    """OUT_profile.txt: the profile of the first model at the largest size."""
    batch, length = max(args.sizes, key=lambda bl: bl[0] * bl[1])
    args.out.with_name(args.out.name + "_profile.txt").write_text(
        profile_text(args.models[0], batch, length, bf16_frozen=not args.fp32_frozen,
                     variants=tuple(args.profile_variants)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=["roberta-base", "gpt2-medium"])
    parser.add_argument("--sizes", nargs="+", type=size, default=SIZES, metavar="BxL",
                        help="batch x length shapes (default: 16x128 32x256)")
    parser.add_argument("--fp32-frozen", action="store_true", help="keep the project's frozen weights in fp32, cast "
                        "by autocast on every pass (as before models.store_frozen_linears_in): for before/after")
    parser.add_argument("--frozen-ab", type=int, default=0, metavar="ROUNDS",
                        help="instead: time frozen weights in bf16 against fp32 in ROUNDS interleaved rounds -> "
                        "OUT_frozen_ab.json")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--profile", action="store_true", help="also write OUT_profile.txt: top CUDA kernels of a "
                        "second-order step and of a peft LoRA step (the first model, at the largest size)")
    parser.add_argument("--profile-variants", nargs="+", choices=list(PASSES), default=["second_order", "peft_lora"],
                        help="the steps to profile")
    parser.add_argument("--profile-only", action="store_true", help="write OUT_profile.txt and time nothing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("make bench needs a CUDA device (run it through the device tool)")
    command = "python -m autolora.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.frozen_ab:
        report = {"command": command, "commit": args.commit or git_commit(), "device": torch.cuda.get_device_name(),
                  "date": dt.date.today().isoformat(), "versions": versions(), "steps": args.steps,
                  "warmup": args.warmup, "rounds": args.frozen_ab,
                  "ms": frozen_dtype_ab(args.models, args.sizes, args.steps, args.warmup, args.frozen_ab)}
        args.out.with_name(args.out.name + "_frozen_ab.json").write_text(json.dumps(report, indent=2) + "\n")
        return
    if args.profile_only:
        write_profile(args)
        return
    report = run_bench(args.steps, args.warmup, args.models, args.sizes, bf16_frozen=not args.fp32_frozen)
    report.update(date=dt.date.today().isoformat(), versions=versions())
    report["commit"] = args.commit or git_commit()
    if args.profile:  # after the timing, so that profiling cannot disturb it
        write_profile(args)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report, report["commit"], command))
    print(markdown(report, report["commit"], command))


if __name__ == "__main__":
    main()
