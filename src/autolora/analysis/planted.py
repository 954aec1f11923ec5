"""Planted-teacher ground truth for the rank search (issue #27): can the search find ranks that are really there?

A frozen random BERT is the backbone; its teacher is a copy whose query/value weights carry planted updates
s · ‖W‖₂ · U Vᵀ of known ranks (U, V orthonormal: every planted direction has singular value s · ‖W‖₂). The
student (the backbone with the project's search layers) regresses the teacher's last hidden state (plus a
little fixed noise, so that the all-zero control is not a zero-loss, zero-gradient problem) under MSE, through
``method.search.search`` itself. Recovery compares the found ranks with the planted ones per matrix.

``python -m autolora.analysis.planted`` runs the sweep and writes the "Planted-teacher rank recovery" section
of results/search_signal.md, its figure and a CSV of every run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from transformers import BertConfig, BertModel

# TargetConfig and Loop are the types inject() and search() take; they are imported from the method modules
# whose signatures name them (tests/test_architecture.py: analysis may import method, not models or engine).
from autolora.files import write_atomic
from autolora.method import readout as rank_readouts
from autolora.method.inject import TargetConfig, inject, public_name
from autolora.method.layers import SelectableLoRA
from autolora.method.search import Loop, SearchConfig, search

TARGETS = TargetConfig(("query", "value"), (), ())
QUERY_RANKS = (0, 1, 2, 4)  # planted per layer; value reverses it, so q and v differ in every layer
VALUE_RANKS = (4, 2, 1, 0)
# svd: an oracle diagnostic, not a rule the method has (learned_ranks); energy and budget: method.readout's ΔW rules
READOUTS = ("gates", "released", "svd", "energy", "budget")
METRICS = ("spearman", "exact", "mae", "zeros_hit", "zeros_total", "mean_rank", "val_ratio")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Study:
    """What every run shares: the backbone's shape, the data's shape, the search's fixed values."""

    layers: int = 4
    hidden: int = 64
    heads: int = 4
    intermediate: int = 128
    vocab: int = 1000
    max_positions: int = 64
    init_range: float = 0.1  # at BERT's 0.02 queries barely touch the output (attention stays uniform)
    seq_len: int = 16
    batch_size: int = 16
    noise: float = 0.05  # target noise std, relative to the backbone output's std
    k: int = 8
    lr: float = 1e-2
    alpha_lr: float = 1e-2
    alpha_norm: str = "softmax"
    eta: float | None = None  # the look-ahead step; None: lr (conf/search/default.yaml's eta: ${.lr})
    alpha_warmup: float = 0.0  # share of the steps before alpha moves (search.alpha_warmup)
    alpha_average: float = 0.0  # share of the last steps whose alpha is averaged (search.alpha_average)
    val_batch_size: int | None = None  # D_val rows per alpha step (search.val_batch_size); None: batch_size


@dataclass(frozen=True)
class Setting:
    """One run: signal strength s, |D_tr| (= |D_val|), search steps, seed; control plants nothing."""

    strength: float
    n_train: int
    steps: int
    seed: int
    control: bool = False


def backbone(study: Study, seed: int) -> BertModel:
    """A seeded random-init BERT without dropout, eager attention (the finite difference needs determinism)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=study.vocab, hidden_size=study.hidden, num_hidden_layers=study.layers,
                        num_attention_heads=study.heads, intermediate_size=study.intermediate,
                        max_position_embeddings=study.max_positions, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=study.init_range)
    config._attn_implementation = "eager"
    return BertModel(config).eval()


def planted_ranks(model: BertModel, control: bool = False) -> dict[str, int]:
    """Public matrix name -> planted rank, in model order (the control plants rank 0 everywhere). The names are
    BertModel's target paths; inject() refuses ranks whose names miss the model's targets (check_rank_keys)."""
    ranks = {}
    for layer in range(model.config.num_hidden_layers):
        for kind, pattern in (("query", QUERY_RANKS), ("value", VALUE_RANKS)):
            ranks[f"encoder.layer.{layer}.attention.self.{kind}"] = 0 if control else pattern[layer % len(pattern)]
    return ranks


def planted_update(weight: torch.Tensor, rank: int, strength: float, gen: torch.Generator) -> torch.Tensor:
    """s · ‖W‖₂ · U Vᵀ with random orthonormal U (out, r), V (in, r): rank exactly r, each direction as strong."""
    out_features, in_features = weight.shape
    if rank == 0:
        return torch.zeros_like(weight)
    u = torch.linalg.qr(torch.randn(out_features, rank, generator=gen, dtype=weight.dtype))[0]
    v = torch.linalg.qr(torch.randn(in_features, rank, generator=gen, dtype=weight.dtype))[0]
    return strength * torch.linalg.matrix_norm(weight, ord=2) * u @ v.T


def teacher(model: BertModel, ranks: dict[str, int], strength: float, seed: int) -> BertModel:
    """A deep copy of the backbone with the planted updates added to its target weights."""
    planted, gen = copy.deepcopy(model), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, rank in ranks.items():
            weight = planted.get_submodule(name).weight
            weight += planted_update(weight, rank, strength, gen)
    return planted


def make_batches(source: BertModel, n: int, study: Study, noise: float, seed: int,
                 batch_size: int | None = None) -> list[dict]:
    """n random token sequences in batches (of study.batch_size unless given); labels = the source model's last
    hidden state + fixed Gaussian noise of std noise x the clean target's std (drawn once: every pass sees the
    same targets)."""
    size = batch_size or study.batch_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, study.vocab, (n, study.seq_len), generator=gen)  # id 0 is BERT's pad
    with torch.no_grad():
        target = source(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    target = target + noise * float(target.std()) * torch.randn(target.shape, generator=gen)
    return [{"input_ids": ids[i:i + size], "attention_mask": torch.ones_like(ids[i:i + size]),
             "labels": target[i:i + size]} for i in range(0, n, size)]


def hidden_mse(outputs, batch: dict) -> torch.Tensor:
    """The search's loss: MSE between the student's last hidden state and the teacher's (batch labels)."""
    return F.mse_loss(outputs.last_hidden_state, batch["labels"])


def search_config(study: Study, steps: int, batches: int) -> SearchConfig:
    """The conf/search/default.yaml recipe (fd forward, eta = lr, warmup 0.06) without dropout, at the study's
    learning rates, with as many epochs over D_tr as the step budget takes."""
    if steps % batches:
        raise ValueError(f"{steps} steps are not a whole number of epochs of {batches} batches")
    eta = study.lr if study.eta is None else study.eta
    return SearchConfig(k=study.k, alpha_norm=study.alpha_norm, hypergrad="fd", fd="forward", eta=eta,
                        fd_eps=0.01, lr=study.lr, alpha_lr=study.alpha_lr, weight_decay=0.01, alpha_weight_decay=0.0,
                        warmup_ratio=0.06, epochs=steps // batches, batch_size=study.batch_size, val_fraction=0.5,
                        lora_alpha=16.0, dropout=0.0, threshold=None, min_rank=0, max_grad_norm=None,
                        ranks_file=None, evaluate=False, alpha_warmup=study.alpha_warmup,
                        alpha_average=study.alpha_average, val_batch_size=study.val_batch_size)


def mean_loss(model: torch.nn.Module, batches: list[dict]) -> float:
    """Mean MSE over batches (no gradients)."""
    with torch.no_grad():
        return float(np.mean([float(hidden_mse(model(**{k: v for k, v in b.items() if k != "labels"}), b))
                              for b in batches]))


def learned_ranks(student: torch.nn.Module, base: BertModel, names, strength: float) -> dict[str, float]:
    """Oracle readout (knows s), threshold-free: per matrix the nuclear norm of the student's learned update
    scale · B diag(gate) A over the planted singular value s · ‖W‖₂, which equals the planted rank where the
    student learned exactly the planted update. It asks whether the fitted student carries the planted structure
    at all: the gates can only show a structure the student learned."""
    ranks = {}
    with torch.no_grad():
        for name in names:
            delta = student.get_submodule(name).parts["all"].delta_weight()
            planted = strength * torch.linalg.matrix_norm(base.get_submodule(name).weight, ord=2)
            ranks[name] = float(torch.linalg.svdvals(delta).sum() / planted)
    return ranks


BatchLoss = Callable[[torch.nn.Module, dict], torch.Tensor]


def init_alignment(student: torch.nn.Module, batches: Iterable[dict],
                   loss: BatchLoss | None = None) -> dict[str, dict[str, list[float]]]:
    """What the draw of A sets before the search moves anything (issue #31's lead): per search matrix and
    component j, `gradient`: ‖G A_jᵀ‖ with G = ∂L/∂W of the frozen weight on D_tr at the start (B = 0, so B_j's
    first gradient is scale · G A_jᵀ: the component that can grow fastest), and `norm`: ‖A_j‖ (a quantity that
    knows nothing of the data). `loss(model, batch)`: the batch's loss (default: the planted teacher's
    hidden_mse); G is the mean over the batches. The weights' requires_grad is restored."""
    loss = loss or (lambda model, batch: hidden_mse(model(input_ids=batch["input_ids"],
                                                           attention_mask=batch["attention_mask"]), batch))
    batches = list(batches)
    modules = {name: m for name, m in student.named_modules() if isinstance(m, SelectableLoRA)}
    for module in modules.values():
        module.base.weight.requires_grad_(True)
        module.base.weight.grad = None
    try:
        for batch in batches:
            (loss(student, batch) / len(batches)).backward()
        out = {}
        with torch.no_grad():
            for name, module in modules.items():
                grad = module.base.weight.grad  # (out, in): nn.Linear
                for part_name, part in module.parts.items():
                    out[public_name(name, part_name)] = {"gradient": (part.A @ grad.T).norm(dim=1).tolist(),
                                                         "norm": part.A.norm(dim=1).tolist()}
    finally:
        for module in modules.values():
            module.base.weight.requires_grad_(False)
            module.base.weight.grad = None
        student.zero_grad(set_to_none=True)
    return out


def order_rhos(quantity: dict[str, list[float]], gates: dict[str, list[float]]) -> dict[str, float]:
    """Per matrix, Spearman's rho between a per-component quantity and the final gates (matrices whose gates or
    quantity are constant left out)."""
    return {n: float(spearmanr(quantity[n], gates[n]).statistic) for n in gates
            if np.ptp(gates[n]) > 0 and np.ptp(quantity[n]) > 0}


def order_agreement(quantity: dict[str, list[float]], gates: dict[str, list[float]]) -> float:
    """Mean over matrices of order_rhos (NaN if every matrix is constant)."""
    rhos = list(order_rhos(quantity, gates).values())
    return float(np.mean(rhos)) if rhos else math.nan


def recovery(found: dict[str, float], planted: dict[str, int], reference: dict[str, int]) -> dict[str, float]:
    """Per run: Spearman's rho of found vs reference ranks over matrices (NaN if either is constant), exact matches
    (found rounded), mean |found - reference|, how many planted-0 matrices got 0 (rounded), and the mean found rank.
    The reference is the planted ranks, or for the control (nothing planted) the pattern the other runs plant:
    what chance scores."""
    names = list(planted)
    got, ref = np.array([found[n] for n in names], dtype=float), np.array([reference[n] for n in names])
    constant = len(set(got.tolist())) < 2 or len(set(ref.tolist())) < 2
    zeros = [n for n in names if planted[n] == 0]
    return {"spearman": math.nan if constant else float(spearmanr(got, ref).statistic),
            "exact": int((np.rint(got) == ref).sum()), "mae": float(np.abs(got - ref).mean()),
            "zeros_hit": sum(round(found[n]) == 0 for n in zeros), "zeros_total": len(zeros),
            "mean_rank": float(got.mean())}


def run(study: Study, setting: Setting) -> dict:
    """One planted-teacher search; returns the setting, per readout the recovery metrics and found ranks, and
    the student's final validation loss relative to the backbone's (how much of the teacher it learned)."""
    seed, began = setting.seed, time.process_time()
    base = backbone(study, seed)
    planted = planted_ranks(base, setting.control)
    source = teacher(base, planted, setting.strength, seed + 1000)
    train = make_batches(source, setting.n_train, study, study.noise, seed + 2000)
    val = make_batches(source, setting.n_train, study, study.noise, seed + 3000, study.val_batch_size)
    student = copy.deepcopy(base)
    inject(student, TARGETS, {name: study.k for name in planted}, lora_alpha=16.0, dropout=0.0,
           alpha_norm=study.alpha_norm, trainable_modules=[])
    cfg = search_config(study, setting.steps, len(train))
    alignment = init_alignment(student, train)
    start = mean_loss(student, val)
    torch.manual_seed(seed + 4000)
    searched = search(student, train, val, cfg, compute_loss=hidden_mse, seed=seed,
                      loop=Loop(CPU, log_every=setting.steps, progress=False))
    student.eval()
    every = rank_readouts.every_readout(gates=searched.gates, alphas=searched.alphas, spectra=searched.spectra,
                                  threshold=cfg.selection_threshold, min_rank=0, energy=cfg.energy)
    found = {"gates": every["gates"], "released": every["released"],
             "svd": None if setting.control else learned_ranks(student, base, planted, setting.strength),
             "energy": every["energy"], "budget": every["budget"]}
    reference = planted_ranks(base) if setting.control else planted
    record = {**asdict(setting), "val_ratio": mean_loss(student, val) / start}
    for readout, ranks in found.items():
        metrics = dict.fromkeys(METRICS[:-1], math.nan) if ranks is None else recovery(ranks, planted, reference)
        record.update({f"{readout}/{key}": value for key, value in metrics.items()})
        record[f"{readout}/ranks"] = "" if ranks is None else " ".join(f"{ranks[n]:g}" if isinstance(ranks[n], int)
                                                                       else f"{ranks[n]:.2f}" for n in planted)
    for quantity in ("gradient", "norm"):  # does the start already fix the gates' order inside each matrix?
        record[f"init_{quantity}/gate_order_rho"] = order_agreement(
            {n: q[quantity] for n, q in alignment.items()}, searched.gates)
    record["planted"] = " ".join(str(planted[n]) for n in planted)
    record["reference"] = " ".join(str(reference[n]) for n in planted)
    record["cpu_s"] = time.process_time() - began  # this process's CPU time (one thread in a worker)
    return record


def _run_one_thread(args: tuple[Study, Setting]) -> dict:
    """A worker's run at one intra-op thread (two workers share the two cores)."""
    torch.set_num_threads(1)
    return run(*args)


def sweep_settings(strengths, sizes, budgets, seeds) -> list[Setting]:
    """The grid, plus the control (nothing planted) at every size, budget and seed."""
    grid = [Setting(s, n, t, seed) for s, n, t, seed in itertools.product(strengths, sizes, budgets, seeds)]
    control = [Setting(0.0, n, t, seed, True) for n, t, seed in itertools.product(sizes, budgets, seeds)]
    return grid + control


def run_sweep(study: Study, settings: list[Setting], workers: int) -> list[dict]:
    """Every setting's run, in the given order; workers > 1 run in spawned processes."""
    if workers <= 1:
        return [run(study, setting) for setting in settings]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_run_one_thread, [(study, s) for s in settings]))


def group_key(record: dict) -> tuple:
    return (record["control"], record["strength"], record["n_train"], record["steps"])


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value) of the finite values; NaN for none."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def summarise(records: list[dict]) -> list[dict]:
    """One row per setting: mean and std over seeds of every metric and readout; rho's mean is over the seeds
    where it is defined (``const``: seeds whose found ranks were constant, rho undefined)."""
    rows = []
    for key, group in itertools.groupby(sorted(records, key=group_key), key=group_key):
        group = list(group)
        row = dict(zip(("control", "strength", "n_train", "steps"), key, strict=True), seeds=len(group))
        for name in [f"{r}/{m}" for r in READOUTS for m in METRICS if m != "val_ratio"] + ["val_ratio"]:
            values = np.array([g[name] for g in group], dtype=float)
            row[name] = mean_std(values)
            if name.endswith("spearman"):
                row[name.replace("spearman", "const")] = int((~np.isfinite(values)).sum())
        rows.append(row)
    return rows


def write_csv(path: Path, records: list[dict]) -> None:
    """Every run's record (setting, metrics per readout, found and planted ranks in model order)."""
    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)

    write_atomic(path, write)  # whole or not at all: the CSV is the study's record of every run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m autolora.analysis.planted", description=__doc__.split("\n")[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512], help="|D_tr| = |D_val| (sequences)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 1024], help="search steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alpha-lr", type=float, default=Study.alpha_lr)
    parser.add_argument("--lr", type=float, default=Study.lr)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results"))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Run the sweep; write results/search_signal.md's section, its figure and results/search_signal_planted.csv."""
    from autolora.analysis import planted_report

    args = parse_args(argv)
    study = replace(Study(), lr=args.lr, alpha_lr=args.alpha_lr)
    settings = sweep_settings(args.strengths, args.sizes, args.budgets, args.seeds)
    commit, began = planted_report.commit(), time.time()  # the commit the sweep started from
    records = run_sweep(study, settings, args.workers)
    seconds = time.time() - began
    write_csv(args.out / "search_signal_planted.csv", records)
    planted_report.write(args.out, study, records, summarise(records), seconds, args.workers, commit)


if __name__ == "__main__":
    main()
