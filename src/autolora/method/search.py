"""The bilevel search loop (docs/method.md §2): per step, a hypergradient step on alpha and an AdamW step on W.

Each step evaluates the hypergradient on one D_tr batch and one D_val batch, updates alpha with its
own AdamW, then updates W with the look-ahead's training gradient ∇_W L_tr(W, alpha) (computed before
alpha moved; DARTS recomputes it after, one more forward/backward for an O(alpha_lr) difference).
Losses stay on the device; the host reads them only every ``log_every`` steps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from autolora.engine import capture
from autolora.engine.batch import Batch, model_inputs, to_device
from autolora.engine.checkpoint import batches_from, resume_loop
from autolora.engine.loop import Loop
from autolora.engine.loss_window import LossWindow
from autolora.engine.rng import GraphSafeStates, ReplayedSeed, dropout_streams
from autolora.errors import Diverged
from autolora.method import noise_test
from autolora.method.hypergrad import (
    FD_SCHEMES,
    HYPERGRADS,
    LossFn,
    Mean,
    Params,
    hypergradient,
    single_process,
)
from autolora.method.inject import gates, raw_alphas, split_params, update_spectra
from autolora.method.layers import ALPHA_NORMS
from autolora.method.ranks import default_threshold
from autolora.method.readout import READOUTS
from autolora.typecheck import at_least, check_ranges, check_types, in_unit_interval, positive_or_none

ComputeLoss = Callable[[object, Batch], Tensor]  # (model outputs, batch) -> scalar loss
ForwardLoss = Callable[[Params, Batch], Tensor]  # (parameters by name, batch) -> scalar loss


@dataclass(frozen=True)
class SearchConfig:
    """The `search` config group (conf/search/*.yaml); every value comes from there."""

    k: int  # components per matrix before selection (the initial rank)
    alpha_norm: str  # softmax (paper) | none | sigmoid (ablations) | global_softmax | sparsemax (issue #27)
    hypergrad: str  # fd (finite difference, docs/method.md §2) | exact (double backward)
    fd: str  # the finite difference: forward (3 passes, O(eps)) | central (4 passes, O(eps^2))
    eta: float  # look-ahead learning rate; 0 = first order
    fd_eps: float  # eps = fd_eps / ‖v‖
    lr: float  # AdamW learning rate of W (LoRA factors and head)
    alpha_lr: float  # AdamW learning rate of alpha
    weight_decay: float
    alpha_weight_decay: float
    warmup_ratio: float
    epochs: int
    batch_size: int
    val_fraction: float  # share of the training set held out as D_val
    lora_alpha: float  # peft's scaling numerator: scale = lora_alpha / k
    dropout: float
    threshold: float | None  # None: default_threshold(k, alpha_norm)
    min_rank: int
    max_grad_norm: float | None
    ranks_file: str | None  # retrain with these ranks and skip the search
    evaluate: bool  # score the search model on dev after the search (costly for generation tasks)
    readout: str = "gates"  # gates (paper) | released | energy | budget (method/readout.py)
    energy: float = 0.9  # readout=energy: the share of ‖ΔW‖_F² the kept components hold
    train_head: bool = True  # the task head learns in the search (paper); the released code keeps it frozen
    alpha_warmup: float = 0.0  # share of the steps before alpha moves (its lr 0 until then); 0: from the start (paper)
    alpha_average: float = 0.0  # share of the last steps whose alpha is averaged into the final alpha; 0: the last
    ranks_readout: str | None = None  # with ranks_file: retrain at this readout's ranks from the file's
    # "readouts" (one search, a retrain per readout); None: the file's "ranks" (its search's own readout)
    val_batch_size: int | None = None  # D_val rows per alpha step; None: batch_size (paper). N x batch_size is the
    # hypergradient over N validation batches (the mean loss of their union), one step's noise cut by sqrt(N)

    def __post_init__(self):
        check_types(self, "search")
        checks = [
            (self.k >= 1, f"search.k must be >= 1, got {self.k}"),
            (self.k >= 2 or self.alpha_norm not in ("softmax", "sparsemax"),
             f"search.k must be >= 2 under alpha_norm={self.alpha_norm}: one component's gate is 1 whatever alpha "
             "is"),
            (0 < self.energy <= 1, f"search.energy must lie in (0, 1], got {self.energy}"),
            (self.alpha_norm in ALPHA_NORMS,
             f"search.alpha_norm must be one of {ALPHA_NORMS}, got {self.alpha_norm!r}"),
            (self.hypergrad in HYPERGRADS, f"search.hypergrad must be one of {HYPERGRADS}, got {self.hypergrad!r}"),
            (self.fd in FD_SCHEMES, f"search.fd must be one of {FD_SCHEMES}, got {self.fd!r}"),
            (self.readout in READOUTS, f"search.readout must be one of {READOUTS}, got {self.readout!r}"),
            (self.ranks_readout is None or self.ranks_readout in READOUTS,
             f"search.ranks_readout must be null or one of {READOUTS}, got {self.ranks_readout!r}"),
            (self.ranks_readout is None or self.ranks_file is not None,
             "search.ranks_readout picks a readout of search.ranks_file's ranks.json: set search.ranks_file too "
             "(a search of this run reads out by search.readout)"),
            (self.eta >= 0, f"search.eta must be >= 0, got {self.eta}"),
            (self.fd_eps > 0, f"search.fd_eps must be > 0, got {self.fd_eps}"),
            (self.epochs >= 1, f"search.epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"search.batch_size must be >= 1, got {self.batch_size}"),
            (self.val_batch_size is None or self.val_batch_size >= 1,
             f"search.val_batch_size must be >= 1 or null, got {self.val_batch_size}"),
            (0 < self.val_fraction < 1, f"search.val_fraction must lie in (0, 1), got {self.val_fraction}"),
            (self.threshold is None or 0 < self.threshold <= 1,
             f"search.threshold must lie in (0, 1], got {self.threshold}"),
            (0 <= self.min_rank <= self.k, f"search.min_rank must lie in [0, k={self.k}], got {self.min_rank}"),
            (0 <= self.warmup_ratio < 1, f"search.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}"),
            (0 <= self.alpha_warmup < 1, f"search.alpha_warmup must lie in [0, 1), got {self.alpha_warmup}"),
            (0 <= self.alpha_average <= 1, f"search.alpha_average must lie in [0, 1], got {self.alpha_average}"),
            *[(at_least(getattr(self, key), 0), f"search.{key} must be >= 0, got {getattr(self, key)}")
              for key in ("lr", "alpha_lr", "weight_decay", "alpha_weight_decay")],
            (at_least(self.lora_alpha, 0) and self.lora_alpha > 0,
             f"search.lora_alpha must be > 0, got {self.lora_alpha}"),
            (in_unit_interval(self.dropout), f"search.dropout must lie in [0, 1), got {self.dropout}"),
            (positive_or_none(self.max_grad_norm),
             f"search.max_grad_norm must be > 0 or null, got {self.max_grad_norm}"),
            (at_least(self.eta, 0) and at_least(self.fd_eps, 0), "search.eta and search.fd_eps must be finite"),
        ]
        check_ranges(checks)

    @property
    def selection_threshold(self) -> float:
        return default_threshold(self.k, self.alpha_norm) if self.threshold is None else self.threshold


def forward_loss(model: nn.Module, compute_loss: ComputeLoss, autocast: Callable) -> ForwardLoss:
    """L(params; batch): one forward pass with the model's parameters substituted by name (functional_call),
    so that W', W ± eps·v never touch the model's own tensors."""

    def loss(params: Params, batch: Batch) -> Tensor:
        with autocast():
            outputs = torch.func.functional_call(model, params, args=(), kwargs=model_inputs(batch), strict=False)
        return compute_loss(outputs, batch)

    return loss


def batch_loss(loss: ForwardLoss, batch: Batch, draw: Callable[[int], object]) -> LossFn:
    """L(params) on one batch; its i-th evaluation draws dropout masks from draw(i) (rng.py), which gives
    every evaluation of a step the same masks: the finite difference then differences one function."""
    calls = itertools.count()

    def on_batch(params: Params) -> Tensor:
        with draw(next(calls)):
            return loss(params, batch)

    return on_batch


def apply_grads(optimizer: torch.optim.Optimizer, params: Iterable[Tensor], grads: Iterable[Tensor], max_norm) -> None:
    """Install gradients, clip them (no host sync: foreach, non-finite check off) and step."""
    params = list(params)
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def alpha_entropy(gate: Tensor) -> Tensor:
    """Entropy of a gate vector normalised to sum one (log k = undecided, 0 = one component)."""
    p = gate.clamp_min(0)
    p = p / p.sum().clamp_min(1e-12)
    return -(p * p.clamp_min(1e-12).log()).sum()


@dataclass
class SearchState:
    """What persists across search steps: the two parameter groups, their optimisers, W's schedule and the
    dropout streams of the passes."""

    inner: dict[str, Tensor]
    outer: dict[str, Tensor]
    opt_w: torch.optim.Optimizer
    opt_alpha: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    streams: ReplayedSeed | GraphSafeStates = field(repr=False)


def start_search(model: nn.Module, cfg: SearchConfig, total_steps: int) -> SearchState:
    """Split the parameters and build AdamW for W (linear warmup/decay) and AdamW for alpha (capture.adamw:
    on CUDA fused and capturable, learning rates on the device)."""
    inner, outer = split_params(model)
    if not outer:
        raise ValueError("the model has no alpha: inject the search layers (alpha_norm set) first")
    opt_w = capture.adamw(list(inner.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_alpha = capture.adamw(list(outer.values()), lr=cfg.alpha_lr, weight_decay=cfg.alpha_weight_decay)
    schedule = get_linear_schedule_with_warmup(opt_w, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    device = next(iter(inner.values())).device
    return SearchState(inner, outer, opt_w, opt_alpha, schedule, dropout_streams(device))


def search_update(state: SearchState, batch: Batch, val_batch: Batch, cfg: SearchConfig, loss: ForwardLoss,
                  mean: Mean = single_process) -> Tensor:
    """One alternating step's device work on device-resident batches: hypergradient, alpha step, W step
    (clipped); returns (train, val) losses as a device tensor. The schedule steps outside (search_step,
    the loop): its host-side arithmetic cannot be captured in a CUDA graph.

    Nothing in here waits for the device (checked on a GPU under torch.cuda.set_sync_debug_mode("error")),
    so capture.CapturedStep can capture it. Data parallel: the batches are this process's shards and `mean`
    averages over processes.
    """
    state.streams.new_step()
    hyper = hypergradient(
        batch_loss(loss, batch, state.streams.train),
        batch_loss(loss, val_batch, lambda _: state.streams.val()),
        state.inner, state.outer, method=cfg.hypergrad, eta=cfg.eta, fd_eps=cfg.fd_eps, fd_scheme=cfg.fd, mean=mean,
    )
    apply_grads(state.opt_alpha, state.outer.values(), hyper.alpha_grad, None)
    apply_grads(state.opt_w, state.inner.values(), hyper.inner_grad, cfg.max_grad_norm)
    return torch.stack([hyper.train_loss, hyper.val_loss]).float()


def search_step(
    model: nn.Module, state: SearchState, batch: Batch, val_batch: Batch, cfg: SearchConfig,
    compute_loss: ComputeLoss, autocast: Callable, mean: Mean = single_process,
) -> Tensor:
    """One whole eager step (update, then the schedule); returns (train, val) losses as a device tensor."""
    losses = search_update(state, batch, val_batch, cfg, forward_loss(model, compute_loss, autocast), mean)
    state.schedule.step()
    return losses


@dataclass(frozen=True)
class Searched:
    """The search's result: the final gates normalise(alpha) and the raw alpha per matrix, and what capturing
    the step cost."""

    gates: dict[str, list[float]]
    capture: dict[str, float] | None  # capture.CaptureStats.as_dict(), None when the step ran eagerly
    alphas: dict[str, list[float]] = field(default_factory=dict)
    noise: dict | None = None  # method.noise_test: do the ranks carry a signal?
    spectra: dict[str, tuple[list[float], int]] = field(default_factory=dict)  # inject.update_spectra at the end


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Every group's learning rate to `value`, in place where it is a device tensor (a captured step reads it
    from that address: capture.device_lr)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def alpha_lists(model: nn.Module) -> dict[str, list[float]]:
    """The raw alpha per matrix on the host. It waits for the device, so it runs outside the step only: at the start,
    at the noise test's two snapshots (method.noise_test) and at the end, never once per step."""
    with torch.no_grad():
        return {name: alpha.float().cpu().tolist() for name, alpha in raw_alphas(model).items()}


def search(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, cfg: SearchConfig, *,
           compute_loss: ComputeLoss, seed: int, loop: Loop) -> Searched:
    """Run the alternating search (resuming from `loop.checkpoint` if it holds a search state); return the
    final gates normalise(alpha) per matrix. Pass p over D_tr (D_val) is shuffled with seed + p.
    loop.compile_mode (engine.capture): off steps eagerly; graphs / inductor replay captured steps.
    Data parallel: the loaders yield this process's shards; every process ends with the same alpha."""
    checkpoint, world, device = loop.checkpoint, loop.world, loop.device
    total = cfg.epochs * len(train_loader)
    state = start_search(model, cfg, total)
    optimizers = {"w": state.opt_w, "alpha": state.opt_alpha}
    done, saved = resume_loop(checkpoint, "search", model, optimizers, state.schedule)
    if saved.get("streams"):
        state.streams.load_state_dict(saved["streams"])
    for optimizer in optimizers.values():
        capture.device_lr(optimizer)
    alpha_start = round(cfg.alpha_warmup * total)  # alpha's lr is 0 for steps 1..alpha_start (search.alpha_warmup)
    set_lr(state.opt_alpha, 0.0 if done < alpha_start else cfg.alpha_lr)
    # search.alpha_average: alpha summed over steps average_from+1..total, then replaced by the mean (Polyak)
    average_from = total - round(cfg.alpha_average * total) if cfg.alpha_average > 0 else total
    raw = raw_alphas(model)
    alpha_sum = {name: saved["alpha_sum"][name].to(a.device) if saved.get("alpha_sum")
                 else torch.zeros_like(a, dtype=torch.float32) for name, a in raw.items()}
    world.broadcast([*state.inner.values(), *state.outer.values()])  # one starting point everywhere
    mean = world.mean if world.distributed else single_process  # hypergradient knows single_process (exact needs it)
    window = LossWindow(["train_loss", "val_loss"], device, loop.log_every, mean=mean)
    window.restore(saved.get("window"))
    # raw alpha at the start and after the noise test's two steps (saved with the checkpoint for a resume)
    halves = noise_test.snapshot_steps(total)
    snapshots = saved.get("alpha_snapshots") or ({"start": alpha_lists(model)} if done == 0 else {})
    train_batches, val_batches = batches_from(train_loader, seed, done), batches_from(val_loader, seed + 1, done)
    loss = capture.compiled(forward_loss(model, compute_loss, loop.autocast), loop.compile_mode)
    step_fn = capture.make_step(lambda tr, val: search_update(state, tr, val, cfg, loss, mean), loop.compile_mode,
                               state.streams.generators)
    model.train()
    with tqdm(total=total, initial=done, desc="search", unit="step", disable=not loop.progress) as bar, \
            capture.loop_stream(step_fn):
        for step in range(done + 1, total + 1):
            batch, val_batch = to_device(next(train_batches), device), to_device(next(val_batches), device)
            window.add(step_fn(batch, val_batch))
            state.schedule.step()
            if step == alpha_start:
                set_lr(state.opt_alpha, cfg.alpha_lr)
            if step > average_from:
                with torch.no_grad():
                    for name, a in raw.items():
                        alpha_sum[name] += a.float()
            bar.update()
            if halves is not None and step in halves:
                snapshots[f"t{halves.index(step) + 1}"] = alpha_lists(model)
            if window.due(step, total):
                record = {"phase": "search", "epoch": (step - 1) // len(train_loader), **window.read("search", step),
                          "lr": capture.current_lr(state.opt_w)}
                bar.set_postfix(train=f"{record['train_loss']:.4f}", val=f"{record['val_loss']:.4f}")
                with torch.no_grad():
                    for name, gate in gates(model).items():
                        record[f"alpha_entropy/{name}"] = float(alpha_entropy(gate))
                        record[f"alpha_spread/{name}"] = float(gate.max() - gate.min())  # ranks.gate_spread
                if not all(math.isfinite(v) for k, v in record.items() if k.startswith("alpha_entropy/")):
                    raise Diverged(f"non-finite alpha at search step {step}; lower search.alpha_lr")
                loop.log(record, step)
            if checkpoint is not None:
                checkpoint.after_step("search", step, total, model, optimizers, state.schedule,
                                      {"window": window.state(), "streams": state.streams.state_dict(),
                                       "alpha_snapshots": snapshots,
                                       **({"alpha_sum": alpha_sum} if step > average_from else {})})
    with torch.no_grad():
        if total > average_from:  # the averaged alpha is the search's result: gates, ranks, ΔW and noise test read it
            for name, a in raw.items():
                a.copy_((alpha_sum[name] / (total - average_from)).to(a.dtype))
        found = {name: gate.float().cpu().tolist() for name, gate in gates(model).items()}
    alphas = alpha_lists(model)
    if not all(math.isfinite(g) for gate in found.values() for g in gate):
        raise Diverged("non-finite alpha at the end of the search: no ranks written")
    if halves is None or not {"start", "t1", "t2"} <= snapshots.keys():  # short, or resumed from an older checkpoint
        noise = noise_test.untested(total)
    else:
        noise = noise_test.split_half_test(snapshots["start"], snapshots["t1"], snapshots["t2"], alphas, seed=seed)
    return Searched(found, step_fn.stats.as_dict() if isinstance(step_fn, capture.CapturedStep) else None, alphas,
                    noise, update_spectra(model))
