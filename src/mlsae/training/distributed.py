"""Data-parallel training on ``torch.distributed``: the process group and the few collectives the
trainer needs.

Launch with the standard launcher, ``torchrun --standalone --nproc-per-node N -m mlsae train ...``, or
from Python with :func:`mlsae.training.train.train_parallel` (torch's own ``elastic_launch``, the engine under
torchrun, via :func:`spawn`). NCCL on
CUDA, gloo on CPU, chosen from the device.

How the ranks split the work (written down once, here):

* **Data.** Every rank reads the same token stream and keeps its own contiguous ``batch_size / N``
  rows of each global batch (:meth:`Group.shard`), so an N-process run sees exactly the batches of a
  1-process run with the same ``batch_size`` and its stream position is one number for all ranks.
  The price: each rank tokenises the whole stream (cheap next to the language model's forward pass,
  which each rank runs on its own rows only).
* **Loss and gradients.** The SAE's loss is normalised by statistics of the *global* batch (FVU
  divides by the batch's variance): each rank computes its share with the variance all-reduced
  (:meth:`Group.sum`), and the gradients are **summed** across ranks with one explicit all-reduce per
  parameter per optimiser step (:meth:`Group.sum_grads_`), not ``DistributedDataParallel``: the
  decoder-gradient projection must see the summed gradient, and gradient accumulation needs no
  ``no_sync`` bookkeeping this way.
* **Dead latents.** A latent that fired on any rank fired; the token count is the global one.
* **Initialisation.** ``b_pre`` and the fitted encoder scale come from the first *global* batch
  (:meth:`Group.gather`), and rank 0's parameters are broadcast to all (:meth:`Group.broadcast_`).
* **Files.** Only rank 0 writes checkpoints, logs and progress bars.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import Tensor


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo for everything else."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def launched() -> bool:
    """True in a process started by torchrun / elastic_launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes; a 1-process group does no communication."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's contiguous rows of a global ``[batch, pos]`` batch."""
        if not self.active:
            return batch
        rows = batch.shape[0] // self.world
        return batch[self.rank * rows:(self.rank + 1) * rows]

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over ranks (a new tensor; ``t`` is untouched)."""
        if not self.active:
            return t
        t = t.detach().clone()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def sum_grads_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its sum over ranks (a missing gradient counts as zero)."""
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)

    def gather(self, x: Tensor, dim: int = 1) -> Tensor:
        """Every rank's ``x`` concatenated along ``dim`` in rank order (sizes along ``dim`` may differ)."""
        if not self.active:
            return x
        n = torch.tensor([x.shape[dim]], device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        torch.distributed.all_gather(sizes, n)
        counts = [int(s) for s in sizes]
        pad = list(x.shape)
        pad[dim] = max(counts) - x.shape[dim]
        padded = torch.cat([x, x.new_zeros(pad)], dim=dim).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, counts, strict=True)], dim=dim)

    def broadcast_(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        if not self.active:
            return
        for t in tensors:
            torch.distributed.broadcast(t, src=0)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (building a zoo model or a lens into the shared cache), then the
        others run it (and find the cache filled)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


SOLO = Group()  # the default for one process: no process group


def check_split(batch_size: int, world: int) -> None:
    """Each of ``world`` processes trains ``batch_size / world`` sequences of every batch."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {world} processes; use a multiple of "
                         f"{world} (each process trains batch_size / processes sequences of every batch)")


def group(device: str = "cpu") -> Group:
    """The training processes this one belongs to: joins the process group when launched by torchrun
    (backend from ``device``), else a 1-process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Group(torch.distributed.get_rank(), torch.distributed.get_world_size())
    if not launched():
        return Group()
    torch.distributed.init_process_group(backend_for(device), timeout=timedelta(minutes=30))
    return Group(torch.distributed.get_rank(), torch.distributed.get_world_size())


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[Group]:
    """:func:`group` for the length of a command: the process group it joined is torn down at the end."""
    joined = launched() and not (torch.distributed.is_available() and torch.distributed.is_initialized())
    g = group(device)
    try:
        yield g
    finally:
        if joined and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def local_device(device: str) -> str:
    """``cuda`` means this process's own GPU (``LOCAL_RANK``) under torchrun; other devices are kept."""
    if device == "cuda" and launched():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextlib.contextmanager
def stop_on_sigterm(g: Group) -> Iterator[None]:
    """Under torchrun, turn the SIGTERM the launcher sends when another rank fails into an exception, so
    a checkpoint being written is cleaned up (its temporary folder removed) instead of left behind."""
    if not g.active or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(f"mlsae train: rank {g.rank} stopped by SIGTERM (the launcher stops every rank when one "
                         f"fails); the last complete checkpoint is kept: rerun the same command to resume")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def spawn(entrypoint, nproc_per_node: int, *args) -> dict:
    """Run ``entrypoint(*args)`` in ``nproc_per_node`` processes on this machine, each joined to the process
    group: what ``torchrun --standalone`` does, through the same engine
    (``torch.distributed.launcher.elastic_launch``). ``entrypoint`` must be a module-level function.
    Returns each rank's return value; a failed process stops the others and raises ``ChildFailedError``."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch  # only when spawning processes

    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be at least 1, got {nproc_per_node}")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc_per_node, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    return elastic_launch(config, entrypoint)(*args)
