"""Data parallelism on N processes (torchrun): does it compute the right thing, and how well does it scale?

    torchrun --nproc_per_node 2 -m autolora.bench.ddp --out results/distributed      # GPUs, NCCL
    torchrun --nproc_per_node 2 -m autolora.bench.ddp --check-only --device cpu       # CPU, gloo

1. Agreement: search steps then retrain steps with each process on its share of the same combined
   batches. Every trainable tensor (alpha, LoRA factors, head) must be identical across processes and
   equal, up to rounding, to one process stepping on the combined batches (computed by rank 0 after).
   Checked in float64 (rounding out of the way) and in float32 with roberta-base shapes.
2. Scaling: the median search-step (second order) and retrain-step time with B rows per GPU, on one
   GPU alone and on N GPUs together (N*B rows per step); efficiency = throughput_N / (N * throughput_1).
Rank 0 writes OUT.json and OUT.md (device, commit, date, command).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import RobertaConfig, RobertaForSequenceClassification

from autolora.engine import distributed
from autolora.engine.distributed import SINGLE, World
from autolora.method.inject import inject
from autolora.method.search import SearchConfig, search_step, start_search
from autolora.method.train import RetrainConfig, train_step
from autolora.models.targets import TargetConfig, target_names

TARGETS = TargetConfig(("query", "value"), (), ())


def tiny_model() -> torch.nn.Module:
    """2 layers, hidden 32, no dropout: the float64 exactness check."""
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, num_labels=2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, pad_token_id=1, attn_implementation="eager")
    return RobertaForSequenceClassification(config)


def base_model() -> torch.nn.Module:
    """roberta-base shapes, random init, no dropout (dropout masks differ between batch layouts)."""
    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(num_labels=2, hidden_dropout_prob=0.0,
                                                          attention_probs_dropout_prob=0.0,
                                                          attn_implementation="sdpa"))


def search_config(eta: float, rows: int, lr: float = 5e-2, alpha_lr: float = 5e-1) -> SearchConfig:
    return SearchConfig(k=4, alpha_norm="softmax", hypergrad="fd", fd="central", eta=eta, fd_eps=0.01, lr=lr,
                        alpha_lr=alpha_lr,
                        weight_decay=0.0, alpha_weight_decay=0.0, warmup_ratio=0.0, epochs=1, batch_size=rows,
                        val_fraction=0.5, lora_alpha=4, dropout=0.0, threshold=None, min_rank=0, max_grad_norm=1.0,
                        ranks_file=None, evaluate=False)


def combined_batch(seed: int, rows: int, length: int, vocab: int, world: World, device) -> dict[str, torch.Tensor]:
    """Combined batch `seed` of `rows` rows; this process takes its contiguous share."""
    gen = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(2, vocab, (rows, length), generator=gen)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["labels"] = torch.randint(0, 2, (rows,), generator=gen)
    share = rows // world.size
    return {k: v[world.rank * share : (world.rank + 1) * share].to(device) for k, v in batch.items()}


def classification_loss(outputs, batch):
    return F.cross_entropy(outputs.logits.float(), batch["labels"])


def search_then_retrain(world: World, model: torch.nn.Module, *, eta: float, steps: int, rows: int, length: int,
                        device, dtype=torch.float64, lr: float = 5e-2,
                        alpha_lr: float = 5e-1) -> dict[str, torch.Tensor]:
    """`steps` search steps, then `steps` retrain steps on the searched model, every process on its share
    of the same combined batches; returns every trainable tensor afterwards. (Large default learning
    rates move alpha visibly in 3 steps on the tiny model.)"""
    vocab = model.config.vocab_size
    inject(model, TARGETS, {n: 4 for n in target_names(model, TARGETS)}, lora_alpha=4, dropout=0.0,
           alpha_norm="softmax", trainable_modules=("classifier",))
    model.to(device=device, dtype=dtype).train()
    cfg = search_config(eta, rows, lr, alpha_lr)
    state = start_search(model, cfg, total_steps=steps)
    for step in range(steps):
        search_step(model, state, combined_batch(step, rows, length, vocab, world, device),
                    combined_batch(100 + step, rows, length, vocab, world, device), cfg, classification_loss,
                    contextlib.nullcontext, world.mean)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr / 5)
    retrain = RetrainConfig(epochs=1, lr=lr / 5, weight_decay=0.0, warmup_ratio=0.0, batch_size=rows, lora_alpha=4,
                            dropout=0.0, max_grad_norm=1.0)
    for step in range(steps):
        train_step(model, params, optimizer, combined_batch(200 + step, rows, length, vocab, world, device), retrain,
                   classification_loss, contextlib.nullcontext, world=world)
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def agreement(world: World, device, name: str, build, dtype, rows: int, length: int, lr: float,
              alpha_lr: float) -> dict:
    """Max abs differences of every trainable tensor: between processes, and against one process."""
    kwargs = dict(eta=0.05, steps=3, rows=rows, length=length, device=device, dtype=dtype, lr=lr, alpha_lr=alpha_lr)
    mine = search_then_retrain(world, build(), **kwargs)
    flat = torch.cat([t.flatten().double() for t in mine.values()])
    gathered = [torch.empty_like(flat) for _ in range(world.size)]
    dist.all_gather(gathered, flat)
    between = max(float((g - gathered[0]).abs().max()) for g in gathered)
    result = {"check": name, "dtype": str(dtype).removeprefix("torch."), "processes": world.size,
              "rows_per_step": rows, "lr": lr, "alpha_lr": alpha_lr, "max_diff_between_processes": between}
    if world.is_main:
        single = search_then_retrain(SINGLE, build(), **kwargs)
        alpha = [k for k in single if k.endswith("alpha")]
        result["max_diff_vs_one_process"] = max(float((mine[k] - single[k]).abs().max()) for k in single)
        result["max_diff_vs_one_process_alpha"] = max(float((mine[k] - single[k]).abs().max()) for k in alpha)
        result["alpha_spread"] = max(float(single[k].max() - single[k].min()) for k in alpha)  # alpha moved
    world.barrier()
    return result


def median_ms(step, steps: int, warmup: int, device) -> float:
    """Median wall time of one step in ms (CUDA events on GPU); the all-reduces are inside the step."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            import time

            t0 = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def step_functions(world: World, device, rows_per_gpu: int, length: int):
    """(search step, retrain step) on roberta-base shapes with rows_per_gpu rows on each process, bf16 autocast."""
    autocast = functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    rows, vocab = rows_per_gpu * world.size, 30000
    model = base_model()
    inject(model, TARGETS, {n: 8 for n in target_names(model, TARGETS)}, lora_alpha=16, dropout=0.0,
           alpha_norm="softmax", trainable_modules=("classifier",))
    model.to(device).train()
    cfg = search_config(1e-4, rows)
    state = start_search(model, cfg, total_steps=10_000)
    tr, val = (combined_batch(s, rows, length, vocab, world, device) for s in (1, 2))

    def search():
        search_step(model, state, tr, val, cfg, classification_loss, autocast, world.mean)

    fixed = base_model()
    inject(fixed, TARGETS, {n: 8 for n in target_names(fixed, TARGETS)}, lora_alpha=16, dropout=0.0,
           alpha_norm=None, trainable_modules=("classifier",))
    fixed.to(device).train()
    params = [p for p in fixed.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    retrain_cfg = RetrainConfig(epochs=1, lr=1e-4, weight_decay=0.0, warmup_ratio=0.0, batch_size=rows,
                                lora_alpha=16, dropout=0.0, max_grad_norm=None)

    def retrain():
        train_step(fixed, params, optimizer, tr, retrain_cfg, classification_loss, autocast, world=world)

    return search, retrain


def scaling(world: World, device, rows_per_gpu: int, length: int, steps: int, warmup: int) -> dict:
    """Step times on one GPU (rank 0 alone) and on all of them, same rows per GPU."""
    alone = {}
    if world.is_main:
        search, retrain = step_functions(SINGLE, device, rows_per_gpu, length)
        alone = {"search": median_ms(search, steps, warmup, device),
                 "retrain": median_ms(retrain, steps, warmup, device)}
        del search, retrain
        torch.cuda.empty_cache() if device.type == "cuda" else None
    world.barrier()
    search, retrain = step_functions(world, device, rows_per_gpu, length)
    together = {"search": median_ms(search, steps, warmup, device),
                "retrain": median_ms(retrain, steps, warmup, device)}
    result = {"rows_per_gpu": rows_per_gpu, "length": length, "gpus": world.size}
    for phase in ("search", "retrain"):
        if world.is_main:
            throughput_1 = rows_per_gpu / alone[phase] * 1000
            throughput_n = rows_per_gpu * world.size / together[phase] * 1000
            result[phase] = {"ms_1gpu": round(alone[phase], 2), f"ms_{world.size}gpu": round(together[phase], 2),
                             "rows_per_s_1gpu": round(throughput_1, 1),
                             f"rows_per_s_{world.size}gpu": round(throughput_n, 1),
                             "efficiency": round(throughput_n / (world.size * throughput_1), 3)}
    return result


def write_report(out: Path, checks: list[dict], scales: list[dict], device: torch.device) -> None:
    from autolora.provenance import git_commit, versions

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = {"command": " ".join(["torchrun", "--nproc_per_node", str(checks[0]["processes"]), "-m",
                                 "autolora.bench.ddp",
                                 *sys.argv[1:]]),
            "commit": git_commit(), "device": f"{checks[0]['processes']}x {name}", "date": dt.date.today().isoformat(),
            "versions": versions(), "backend": dist.get_backend()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "agreement": checks, "scaling": scales}, indent=2) + "\n")
    lines = [f"# Data parallel: agreement and scaling ({meta['device']}, {meta['backend']})", "",
             f"- command: `{meta['command']}`", f"- commit: {meta['commit']}", f"- device: {meta['device']}",
             f"- date: {meta['date']}", f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", "",
             "## Agreement (3 search steps, second order, then 3 retrain steps; every trainable tensor)", "",
             "| check | dtype | rows/step | lr / alpha_lr | max diff between processes "
             "| max diff vs 1 process (all / alpha) | alpha spread |",
             "|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['check']} | {c['dtype']} | {c['rows_per_step']} | {c['lr']:g} / {c['alpha_lr']:g} | "
                     f"{c['max_diff_between_processes']:.3g} | "
                     f"{c['max_diff_vs_one_process']:.3g} / {c['max_diff_vs_one_process_alpha']:.3g} | "
                     f"{c['alpha_spread']:.3g} |")
    lines += ["", "## Scaling (roberta-base shapes, bf16 autocast, median step time; same rows per GPU)", "",
              "| phase | rows/GPU x length | 1 GPU ms | N GPUs ms | rows/s 1 GPU | rows/s N GPUs | efficiency |",
              "|---|---|---|---|---|---|---|"]
    for s in scales:
        n = s["gpus"]
        for phase in ("search", "retrain"):
            r = s[phase]
            lines.append(f"| {phase} | {s['rows_per_gpu']}x{s['length']} | {r['ms_1gpu']} | {r[f'ms_{n}gpu']} | "
                         f"{r['rows_per_s_1gpu']} | {r[f'rows_per_s_{n}gpu']} | {r['efficiency']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/distributed")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--check-only", action="store_true", help="agreement only (no timing)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    world = distributed.from_environment()
    if not world.distributed:
        raise SystemExit("run under torchrun with --nproc_per_node >= 2")
    device = distributed.init(world, args.device)
    try:
        checks = [agreement(world, device, "tiny RoBERTa (2 layers)", tiny_model, torch.float64, 8, 12, 5e-2, 5e-1)]
        # float32 at the GLUE learning rates: rounding differs between two half batches and one whole
        checks.append(agreement(world, device, "roberta-base shapes", base_model, torch.float32, 16, 64, 4e-4, 1e-3))
        scales = [] if args.check_only else [scaling(world, device, b, n, args.steps, args.warmup)
                                             for b, n in ((16, 128), (32, 256))]
        if world.is_main:
            print(json.dumps({"agreement": checks, "scaling": scales}, indent=1))
            write_report(Path(args.out), checks, scales, device)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
