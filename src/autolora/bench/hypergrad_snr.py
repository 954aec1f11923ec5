"""The hypergradient's signal-to-noise: per alpha component, the mean of dL_val/dalpha over batch pairs against
its standard deviation, early and late (after some search steps) in a real search.

With the search state frozen, the hypergradient (method.hypergrad, the run's finite difference) is evaluated on
n different (D_tr, D_val) batch pairs. Per component j: snr_j = |mean_b g_j| / sd_b g_j (one batch's signal against
one batch's noise) and t_j = mean / (sd / sqrt(n)). Under a hypergradient that is pure batch noise, |t_j| > 2 for
about 6-7% of the components (t with n - 1 degrees of freedom: 6.4% at n = 16, 7.1% at n = 12). A search step
moves alpha by one batch's hypergradient (Adam-normalised), so a per-batch snr far below 1 means single steps are
mostly noise and only the drift over many steps can carry a signal (method.noise_test tests that drift).

    python -m autolora.bench.hypergrad_snr --model PATH --data-dir DIR [--task rte] [--pairs 16] [--early 10]
        [--steps 60]

Data: GLUE RTE (or SST-2) train.tsv under DIR/glue/; the model: a local folder of a BERT-like encoder.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from autolora.method.hypergrad import hypergradient
from autolora.method.inject import inject
from autolora.method.search import SearchConfig, batch_loss, forward_loss, search_update, start_search
from autolora.models.targets import TargetConfig

COLUMNS = {"rte": ("sentence1", "sentence2"), "sst2": ("sentence", None)}
FOLDERS = {"rte": "RTE", "sst2": "SST-2"}


def read_rows(data_dir: Path, task: str) -> tuple[list[tuple[str, str | None]], list[int]]:
    """The task's train.tsv as (text pairs, labels); RTE's labels are words, SST-2's numbers."""
    first, second = COLUMNS[task]
    with open(data_dir / "glue" / FOLDERS[task] / "train.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    names = sorted({r["label"] for r in rows})
    return ([(r[first], r[second] if second else None) for r in rows],
            [names.index(r["label"]) if task == "rte" else int(r["label"]) for r in rows])


def batches(tokenizer, texts, labels, size: int, count: int, seed: int) -> list[dict]:
    order = np.random.default_rng(seed).permutation(len(labels))[: size * count]
    out = []
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        first = [texts[i][0] for i in chunk]
        second = [texts[i][1] for i in chunk] if texts[0][1] is not None else None
        encoded = tokenizer(first, second, truncation=True, max_length=128, padding=True, return_tensors="pt")
        out.append({**encoded, "labels": torch.tensor([labels[i] for i in chunk])})
    return out


def search_settings(k: int) -> SearchConfig:
    """conf/search/default.yaml (eta = lr = 4e-4, forward difference) without dropout: only batches vary."""
    return SearchConfig(k=k, alpha_norm="softmax", hypergrad="fd", fd="forward", eta=4e-4, fd_eps=0.01, lr=4e-4,
                        alpha_lr=1e-3, weight_decay=0.01, alpha_weight_decay=0.0, warmup_ratio=0.06, epochs=1,
                        batch_size=16, val_fraction=0.5, lora_alpha=16.0, dropout=0.0, threshold=None, min_rank=0,
                        max_grad_norm=None, ranks_file=None, evaluate=False)


def probe(state, loss, cfg, pairs: list[tuple[dict, dict]]) -> dict:
    """Hypergradients of the frozen state on each batch pair: per-component snr and t, summarised."""
    grads = []
    for train, val in pairs:
        hyper = hypergradient(batch_loss(loss, train, lambda _: contextlib.nullcontext()),
                              batch_loss(loss, val, lambda _: contextlib.nullcontext()), state.inner, state.outer,
                              method=cfg.hypergrad, eta=cfg.eta, fd_eps=cfg.fd_eps, fd_scheme=cfg.fd)
        grads.append(torch.stack([g.detach().float() for g in hyper.alpha_grad]).numpy())
    g = np.stack(grads)  # (pairs, matrices, k)
    mean, sd = g.mean(axis=0), g.std(axis=0, ddof=1)
    snr = np.abs(mean) / np.maximum(sd, 1e-30)
    t = snr * math.sqrt(len(pairs))
    return {"pairs": len(pairs), "snr_median": float(np.median(snr)), "snr_p90": float(np.quantile(snr, 0.9)),
            "snr_max": float(snr.max()), "share_t_above_2": float(np.mean(t > 2)),
            "grad_sd_median": float(np.median(sd))}


def folder_name(model_dir: str) -> str:
    """A model folder's name; packages keep theirs in <package>/model, so name the package then."""
    path = Path(model_dir).resolve()
    return path.parent.name if path.name == "model" else path.name


def study(model_dir: str, data_dir: Path, task: str, pairs: int, steps: int, seed: int, early: int = 10,
          k: int = 8) -> dict:
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32,
                                                               attn_implementation="eager")
    config = model.config
    targets = TargetConfig(("query", "value") if config.model_type == "bert" else ("q", "v"), (), ())
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1]
             in targets.modules]
    inject(model, targets, dict.fromkeys(names, k), lora_alpha=16.0, dropout=0.0, alpha_norm="softmax",
           trainable_modules=("classifier",))
    model.train()
    texts, labels = read_rows(data_dir, task)
    cfg = search_settings(k)
    probe_pairs = list(zip(batches(tokenizer, texts, labels, 16, pairs, seed + 100),
                           batches(tokenizer, texts, labels, 16, pairs, seed + 200), strict=True))
    state = start_search(model, cfg, steps)
    loss = forward_loss(model, lambda out, b: F.cross_entropy(out.logits, b["labels"]), contextlib.nullcontext)
    started = time.time()
    result = {"model": folder_name(model_dir), "task": task, "matrices": len(names), "k": k, "seed": seed}
    train, val = batches(tokenizer, texts, labels, 16, steps, seed), batches(tokenizer, texts, labels, 16, steps,
                                                                            seed + 1)
    for step, (tr, va) in enumerate(zip(train, val, strict=True), start=1):
        search_update(state, tr, va, cfg, loss)
        state.schedule.step()
        if step in (early, steps):  # not at step 0: B starts at zero, so every alpha gradient is ~0
            result["early" if step == early else "late"] = {**probe(state, loss, cfg, probe_pairs), "after_steps": step}
    result["seconds"] = round(time.time() - started, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--task", choices=sorted(COLUMNS), default="rte")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60, help="the late probe's step")
    parser.add_argument("--early", type=int, default=10, help="the early probe's step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="append the result as one JSON line here")
    args = parser.parse_args(argv)
    result = study(args.model, args.data_dir, args.task, args.pairs, args.steps, args.seed, args.early)
    print(json.dumps(result))
    if args.out is not None:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
