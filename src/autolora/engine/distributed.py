"""Data parallelism across processes (torchrun): who this process is, and the few collectives we need.

Launch: ``torchrun --nproc_per_node N run.py ...`` (or ``torchrun --nproc_per_node N -m autolora.cli.main ...``).
torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; one process per GPU (NCCL), or per CPU worker (gloo).

Why not DistributedDataParallel: the search computes its gradients with ``torch.autograd.grad`` on
substituted parameters (W', W ± eps·v), which DDP's backward hooks never see; the hypergradient instead
averages its intermediate gradients through `World.mean` (hypergrad.py). Retraining uses the same
call on the LoRA and head gradients: a few hundred thousand numbers, one flat all-reduce per step.
Batch sizes in the config are global: each of the N processes takes batch_size / N rows per step, so a
run on N GPUs follows the same optimisation (steps, schedule) as on one.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class World:
    """This process's place among `size` data-parallel processes (size 1: a plain single-process run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes the run directory, logs, checkpoints and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def mean(self, tensors: list[Tensor]) -> list[Tensor]:
        """The element-wise mean over processes of each tensor: one flat all-reduce, no host sync."""
        if not self.distributed or not tensors:
            return tensors
        flat = _flatten_dense_tensors([t.detach() for t in tensors])
        dist.all_reduce(flat)  # SUM: AVG is NCCL-only, and gloo must give the same numbers in the CPU test
        flat.div_(self.size)
        return [m.to(t.dtype) for m, t in zip(_unflatten_dense_tensors(flat, tensors), tensors, strict=True)]

    def average_grads(self, params: list[Tensor]) -> None:
        """Replace every parameter's .grad by its mean over processes (missing grads count as zero)."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for param, grad in zip(params, self.mean(grads), strict=True):
            param.grad = grad

    def broadcast(self, tensors: list[Tensor]) -> None:
        """Overwrite each tensor in place with rank 0's values (identical starting points)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def share(self, obj: Any) -> Any:
        """Rank 0's Python object, on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def share_outcome(self, compute: Callable[[], Any], error: type[Exception]) -> Any:
        """compute() on the main process, its result on all; an `error` raised there is raised everywhere
        (instead of leaving the others waiting for a result that never comes)."""
        if not self.distributed:
            return compute()
        outcome = None
        if self.is_main:
            try:
                outcome = (True, compute())
            except error as err:
                outcome = (False, str(err))
        ok, value = self.share(outcome)
        if not ok:
            raise error(value)
        return value

    def gather_interleaved(self, part: list) -> list:
        """Reassemble a list split as items[rank::size] (see `shard`) in its original order."""
        if not self.distributed:
            return part
        parts: list[list] = [None] * self.size  # type: ignore[list-item]
        dist.all_gather_object(parts, part)
        whole: list = [None] * sum(map(len, parts))
        for rank, items in enumerate(parts):
            whole[rank :: self.size] = items
        return whole

    def shard(self, items):
        """This process's share of an evaluation list or Dataset: every size-th item, no padding or duplicates."""
        if not self.distributed:
            return items
        if hasattr(items, "select"):  # a datasets.Dataset
            return items.select(range(self.rank, len(items), self.size))
        return items[self.rank :: self.size]

    def agree_on_stop(self, signum: int | None, device: torch.device) -> int | None:
        """The stop signal any process received (the largest number), on every process; one host sync."""
        if not self.distributed:
            return signum
        flag = torch.tensor([signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def per_process(self, batch_size: int, key: str) -> int:
        """The local batch size of a global one; it must split evenly."""
        if batch_size % self.size:
            raise ValueError(f"{key}={batch_size} does not split over {self.size} processes: "
                             f"use a multiple of {self.size}")
        return batch_size // self.size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()


def from_environment() -> World:
    """The World torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (a single process without them).
    A SLURM job of several tasks started by submitit (hydra/launcher=slurm, tasks_per_node > 1) gets
    these variables from submitit's helper first."""
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm" \
            and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # we pick cuda:LOCAL_RANK ourselves
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device_type: str) -> torch.device | None:
    """Join the process group (NCCL for CUDA, gloo for CPU); returns this process's device, or None
    when single-process (the configured device stands)."""
    if not world.distributed:
        return None
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return torch.device("cuda", world.local_rank) if device_type == "cuda" else torch.device("cpu")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
