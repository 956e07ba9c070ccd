"""The input pipeline side of the bench: small prepared datasets made by each task's own ``download`` and
``prepare`` hooks, and the batches a training loop waits for.

The data-stall fraction is the share of a training step spent waiting for its batch:

    data_stall_fraction = t_data / (t_data + t_step)

``t_data``: median seconds per step from asking for the next batch to having it on the device, served as
``flexheads.train.fit`` serves it (:func:`flexheads.data.loader.step_batches` with ``train.<task>.loader_workers``).
With synchronous loading (``loader_workers: 0``: the loop calls ``batch_at(step)`` itself) that is building the
batch (sampling, augmentation) plus the copy to the device; with background workers it is only the time the loop
blocks on them (their work overlaps the steps, and competes with them for the cores).
``t_step``: median seconds of the standard model's forward + backward + optimiser step on that batch.  Both are
phases of one candidate of the interleaved timing (``flexheads.bench.timing``), measured in the same rounds.

Every task's ``training_batches`` holds its train split in memory, so the count of images or frames changes
the data time little; the size of each sample (crop, image side, window) is what matters, and the thesis sizes
prepare the data at theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from flexheads.config import Params, Section
from flexheads.data.loader import step_batches
from flexheads.tasks import get_task
from flexheads.train import to_device

Batch = Any

# data.<task>.synthetic overrides: enough samples for batches, few enough to generate in seconds
QUICK_COUNTS = {
    "pose3d": {"sequences_per_action": 1, "frames_per_sequence": 20},
    "pose2d": {"n_train_images": 8, "n_val_images": 2},
    "cxr": {"n_patients": 16, "n_covid_images": 4},
}
FULL_COUNTS = {
    "pose3d": {"sequences_per_action": 1, "frames_per_sequence": 200},
    "pose2d": {"n_train_images": 64, "n_val_images": 4},
    "cxr": {"n_patients": 64, "n_covid_images": 8},
}


def data_settings(params: Params, task: str, counts: Mapping[str, Any], overrides: Mapping[str, Any]) -> Section:
    """``data.<task>`` of ``params`` with its synthetic generator's ``counts`` and the size's ``overrides``
    (e.g. ``image_size``, ``crop_size``)."""
    data = params.task_data(task)
    synthetic = data.synthetic.model_copy(update=dict(counts))
    return data.model_copy(update={**overrides, "synthetic": synthetic})


def prepared_data(task: str, data: Section, folder: Path) -> Path:
    """Generate ``data`` (a synthetic source) with the task's ``download`` into ``folder/raw`` and ``prepare`` it;
    returns the prepared HDF5 file."""
    hooks = get_task(task)
    hooks.download(data, folder / "raw")
    h5 = folder / f"{task}.h5"
    hooks.prepare(data, folder / "raw", h5, folder / f"{task}.stats.json")
    return h5


def loader_name(workers: int) -> str:
    """How :func:`batch_source` delivers batches with ``workers`` (``train.<task>.loader_workers``)."""
    if workers == 0:
        return "synchronous (in the training process)"
    return f"{workers} background worker process{'es' if workers > 1 else ''}"


def batch_source(batch_at: Callable[[int], Batch], steps: int, workers: int,
                 device: torch.device) -> Generator[Batch, None, None]:
    """The batches of steps ``1 .. steps`` on ``device``, served as training serves them
    (:func:`flexheads.data.loader.step_batches` with ``workers``, pinned on CUDA); each ``next()`` is what the
    training loop waits for.  Close it when done (it stops the workers)."""
    batches = step_batches(batch_at, 1, steps, workers=workers, pin_memory=device.type == "cuda")
    try:
        for batch in batches:
            yield to_device(batch, device)
    finally:
        batches.close()


class FedStep:
    """A candidate of two phases: ``data`` takes the next batch from a source, ``step`` trains on it."""

    def __init__(self, source: Iterator[Batch], train: Callable[[Batch], None]) -> None:
        self.source = source
        self.train = train
        self.batch: Batch = None

    def data(self) -> None:
        self.batch = next(self.source)

    def step(self) -> None:
        self.train(self.batch)


def stall_fraction(t_data: float, t_step: float) -> float:
    """``t_data / (t_data + t_step)`` (module docstring)."""
    return t_data / (t_data + t_step)
