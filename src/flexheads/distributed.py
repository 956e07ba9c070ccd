"""Data-parallel training with ``torchrun``: ``train.<task>.processes`` ranks share each step's batch.

``flexheads train`` of a run with ``processes: N > 1`` re-executes itself as ``python -m torch.distributed.run
--standalone --nproc-per-node N -m flexheads train ...`` (:func:`relaunch`), so Snakemake, DVC and Slurm run the
same command whatever N is.  Every rank then:

* builds the same model from the same seed and makes step *t*'s whole batch, ``batch_at(t)``, a pure function of
  seed and step, and keeps its share (:func:`shard`: rank *r* of *N* takes rows ``[r·B/N, (r+1)·B/N)``), so
  ``batch_size`` is the global batch whatever N is and the data order never depends on N;
* runs the loss under ``DistributedDataParallel``, which averages the gradients over the ranks: for a loss that is
  a mean over samples, the mean over equal shards is the single-process gradient of the whole batch, up to float
  rounding (the sum is taken in another order, and BatchNorm normalises each shard with its own statistics), so a
  2-process curve follows the 1-process one closely but not bit for bit;
* reads the loss as the mean over the ranks (:func:`mean_over_ranks`); the gradient norm is already global.

Only rank 0 (:attr:`World.is_main`) validates, checkpoints, writes the run's files and logs to MLflow (its
``cpu_time_s`` is rank 0's process alone: the run costs about N times that).  A
checkpoint holds the unwrapped model and optimiser, the same on every rank, so a run resumes with any N (a Slurm
job restarted on fewer GPUs).  Backend: NCCL on CUDA (one GPU per rank, ``cuda:<LOCAL_RANK>``), gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from flexheads.data.loader import map_tensors


@dataclass(frozen=True)
class World:
    """This process's place among the ranks ``torchrun`` started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates, checkpoints, writes files and logs."""
        return self.rank == 0


def world() -> World:
    """The world ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def relaunch(processes: int) -> None:
    """Replace this ``flexheads`` process by ``torchrun`` running ``processes`` copies of its command, unless it is
    one of them already (then return).  One node; ``--standalone`` picks a free rendezvous port."""
    if processes <= 1 or "WORLD_SIZE" in os.environ:
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "flexheads", *sys.argv[1:]]
    # each rank in a process of its own, not a warm server's child (flexheads.warm.ENV, not imported: the training
    # code would then depend on every module the server preloads): torchrun watches and signals workers by pid
    environment = {key: value for key, value in os.environ.items() if key != "FLEXHEADS_WARM"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, environment)


@contextlib.contextmanager
def process_group(current: World, device: torch.device) -> Iterator[torch.device]:
    """The process group of ``current`` (nothing for a world of one) and the device this rank trains on."""
    if current.size == 1:
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", current.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def shard(batch: Any, current: World) -> Any:
    """This rank's rows of ``batch`` (a tensor, or a tuple, list or dict of them, batch first): the
    ``current.rank``-th of ``current.size`` equal contiguous blocks.  ``batch_size % processes == 0`` is checked
    when params.yaml is read."""
    if current.size == 1:
        return batch

    def block(tensor: torch.Tensor) -> torch.Tensor:
        rows = tensor.shape[0] // current.size
        return tensor[current.rank * rows:(current.rank + 1) * rows]

    return map_tensors(batch, block)


def mean_over_ranks(values: torch.Tensor, current: World) -> torch.Tensor:
    """``values`` averaged element-wise over the ranks (gloo has no AVG: a sum divided by the world size)."""
    if current.size == 1:
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / current.size


def barrier(current: World) -> None:
    """Wait until every rank gets here (nothing for a world of one)."""
    if current.size > 1:
        dist.barrier()


class DataParallelLoss(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``DistributedDataParallel`` wraps the whole training step: a
    task's loss may call any method of its model (pose2d's ``predict``), not only ``forward``."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def data_parallel(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], current: World,
                  device: torch.device) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``loss_fn`` itself for a world of one; otherwise a ``loss_fn(model, batch)`` that runs the step under
    ``DistributedDataParallel`` (gradients averaged over the ranks during the backward)."""
    if current.size == 1:
        return loss_fn
    wrapped = nn.parallel.DistributedDataParallel(DataParallelLoss(model, loss_fn),
                                                  device_ids=[device.index] if device.type == "cuda" else None)
    return lambda _model, batch: wrapped(batch)
