"""The training loop's batches, drawn in the training process or prefetched by background worker processes.

A task's ``batch_at(step)`` is a pure function of the run's seed and the step: every built-in task draws its rows
and its augmentation from ``numpy.random.default_rng([seed, step])`` and never from torch's global generator (the
only torch op of a ``batch_at``, pose2d's ``grid_sample`` warp, draws nothing).  So it does not matter which process
computes a batch, or when: the batch of step t is the same in a worker as in the training process, a resumed run
sees exactly the batches of an uninterrupted one, and the training process's RNG (dropout) is never touched.

:func:`step_batches` serves the batches of steps ``first_step .. last_step`` in order:

* ``workers == 0`` (``train.<task>.loader_workers``' default): the plain in-process path, ``batch_at(step)``
  called when the loop asks for the step's batch, no ``DataLoader`` and no process.  The right choice on a CPU-only
  machine, where a worker would compete with training for the same few cores.
* ``workers > 0``: a ``torch.utils.data.DataLoader`` over :class:`StepBatches` (map-style: item ``step`` is
  ``batch_at(step)``) with ``batch_size=None`` (each item already is a batch), ``sampler=range(first_step,
  last_step + 1)``, ``workers`` persistent worker processes that each keep ``prefetch_factor`` batches ready,
  ``pin_memory`` when training on CUDA (so that the loop's ``.to(device, non_blocking=True)`` overlaps the
  copy with compute), and its own ``torch.Generator`` for the workers' base seed, so starting the loader draws
  nothing from the global generator and training stays bit-identical to ``workers == 0``.  Batches are
  returned as ``batch_at`` made them (no collation: a tuple stays a tuple).

Worker processes are started with ``fork``: a worker inherits the training process's memory, including the
train split that every built-in task's ``training_batches`` reads into memory once (HDF5 is opened, read and
closed there, so no HDF5 handle crosses a fork; a task that kept a file open for lazy reads would have to open
one handle per worker, e.g. on first use in the worker).  ``batch_at`` is a closure of ``training_batches`` and
cannot be pickled, so the ``spawn`` and ``forkserver`` start methods (macOS's and Windows' default) cannot run
it: there :func:`step_batches` refuses ``workers > 0`` with a ``ParamsError`` (one line from the CLI) rather
than fail in the workers.
A worker runs torch with one thread (``DataLoader`` sets it); its CPU time is not the training process's
(``time.process_time`` in :func:`flexheads.train.fit` does not count it).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from flexheads.errors import ParamsError

Batch = Any
PREFETCH_FACTOR = 2  # batches each worker keeps ready ahead of the loop (DataLoader's default)


class StepBatches(Dataset):
    """Map-style dataset whose item ``step`` is ``batch_at(step)``, the training batch of that step."""

    def __init__(self, batch_at: Callable[[int], Batch]) -> None:
        self.batch_at = batch_at

    def __getitem__(self, step: int) -> Batch:
        return self.batch_at(int(step))


def map_tensors(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    """``batch`` (a tensor, or a tuple, list or dict of them, nested) with ``fn`` applied to every tensor."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {key: map_tensors(value, fn) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(value, fn) for value in batch)
    return batch


def _as_is(batch: Batch) -> Batch:
    """The loader's ``collate_fn``: an item is a whole batch already (module level, so it pickles)."""
    return batch


def step_batches(batch_at: Callable[[int], Batch], first_step: int, last_step: int, *, workers: int = 0,
                 pin_memory: bool = False, prefetch_factor: int = PREFETCH_FACTOR) -> Iterator[Batch]:
    """The batches of steps ``first_step .. last_step`` (inclusive) in order (see the module docstring).

    A generator: with ``workers > 0`` the worker processes start on the first ``next`` and stop when it is
    exhausted or closed (``close()``, e.g. when training stops early), so close it in a ``finally``.

    Raises:
        ParamsError: ``workers > 0`` on a platform without the ``fork`` start method (a ``ValueError``).
    """
    if workers == 0:
        for step in range(first_step, last_step + 1):
            yield batch_at(step)
        return
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ParamsError("train.<task>.loader_workers > 0 needs the 'fork' start method (a task's batch_at is a "
                         "closure and cannot be pickled for 'spawn'); set loader_workers: 0 on this platform")
    if first_step > last_step:
        return
    loader = DataLoader(StepBatches(batch_at), batch_size=None, sampler=range(first_step, last_step + 1),
                        num_workers=workers, collate_fn=_as_is, pin_memory=pin_memory, persistent_workers=True,
                        prefetch_factor=prefetch_factor, multiprocessing_context="fork",
                        generator=torch.Generator().manual_seed(0))
    batches = iter(loader)
    try:
        yield from batches
    finally:
        batches._shutdown_workers()  # persistent workers outlive an exhausted iterator otherwise
