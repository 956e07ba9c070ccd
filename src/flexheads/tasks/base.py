"""The contract of a task: what a task package provides to the stages, the training loop and the report.

A built-in task is two modules (a task defined elsewhere is one object given to :func:`flexheads.tasks.register`):

* ``flexheads.tasks.settings.<name>``: ``SETTINGS``, a :class:`TaskSettings` naming the pydantic classes of its
  params.yaml sections ``model.<name>``, ``train.<name>`` and ``data.<name>``.  It imports nothing heavy: every
  stage validates the whole params.yaml, so every stage loads every task's settings.
* ``flexheads.tasks.<name>``: a module satisfying :class:`Task`: the stage hooks and the report's declarations.
  Only the stages of this task load it (``flexheads.code_deps`` counts it as their code).

:func:`check_task` lists what an object lacks to satisfy :class:`Task` (``tests/test_tasks.py`` runs it on every
registered task).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from flexheads.config import EncoderSettings, RunConfig, Section, TrainSettings

BatchAt = Callable[[int], Any]  # step → the training batch of that step (a pure function of seed and step)
LossFn = Callable[["nn.Module", Any], "torch.Tensor"]  # (model, batch) → scalar loss
Validate = Callable[["nn.Module", "torch.device"], float]  # (model, device) → the validation metric


@dataclass(frozen=True)
class TaskSettings:
    """The params.yaml sections of one task, as the pydantic classes that validate them (with their defaults)."""

    model: type[EncoderSettings]  # model.<task>: the encoder's size plus the task's own model keys
    train: type[TrainSettings]  # train.<task>: the loop's settings plus the task's own
    data: type[Section]  # data.<task>: where the data comes from and how it is prepared
    check: Callable[[Any, Any, Any], None] | None = None  # (model, train, data) → ValueError if they disagree


class Task(Protocol):
    """Every hook and constant a task provides (a task module satisfies it with module-level names)."""

    NAME: str
    """The task's name: ``experiment.tasks`` entry, first part of its run names, its params.yaml sub-sections."""

    TITLE: str
    """A human title, e.g. "3D human pose lifting" (the report's section heading)."""

    SETTINGS: TaskSettings
    """Its params.yaml sections (for a built-in task, its settings module's ``SETTINGS``)."""

    ARCHITECTURES: Mapping[str, Callable[[dict[str, Any]], nn.Module]]
    """Model class name saved in ``model.pt`` → a constructor from the saved model config (``to_dict``)."""

    MAIN_METRIC: str
    """The key of ``evaluate``'s headline that ranks runs and is drawn as ``val_<MAIN_METRIC>`` in the curves;
    one of ``REPORT_COLUMNS``' keys (whose ``better`` says whether higher or lower wins)."""

    MAIN_METRIC_UNIT: str
    """The main metric's unit as figure labels print it, e.g. "mm" ("" for a pure number)."""

    SAMPLE_GROUP: str
    """What one ``group`` of ``evaluate``'s ``samples`` is, e.g. "patient" (the summary caption's resampling unit)."""

    LOSS_LABEL: str
    """What the training loss is, with units: the y label of the training-curve figure."""

    REPORT_CAPTION: str
    """The caption of the task's comparison table: the protocol and the units of its columns."""

    REPORT_COLUMNS: Sequence[tuple[str, str, str | None]]
    """The comparison table's metric columns: ``(key in metrics/<run>.json, header, better)``, better ``"min"``,
    ``"max"`` or None (a reference column, never bold)."""

    REPORT_BREAKDOWNS: Sequence[tuple[str, str, str, str, str]]
    """Breakdown tables: ``(metrics/<run>/<name>.csv, key column, value column, label, better)``, one table
    ``<task>_<name>`` with a row per attention × regime and a column per key."""

    REPORT_FIGURES: Sequence[tuple[str, str]]
    """The task's figures beyond curves, gradient histograms and attention maps: ``(suffix, kind)``, figure
    ``<task>_<suffix>`` drawn by the report's figure kind ``kind`` (``flexheads.report.figures.FIGURE_KINDS``)."""

    def download(self, data: Any, out_dir: Path) -> dict[str, Path]:
        """Fill ``out_dir`` with the raw dataset of ``data`` (the ``data.<task>`` section): generate the synthetic
        default or fetch and verify the real files; returns the written paths by kind."""
        ...

    def prepare(self, data: Any, raw_dir: Path, out_h5: Path, stats_json: Path) -> dict[str, Any]:
        """Normalise ``raw_dir`` into the sealed HDF5 file ``out_h5`` (``flexheads.data.prepared.seal``) and its
        statistics JSON ``stats_json`` (written atomically, ``content_sha256`` included); returns the statistics."""
        ...

    def build_model(self, config: RunConfig, h5_path: Path) -> nn.Module:
        """The run's freshly initialised model, sized and standardised from the prepared file.  The model has a
        ``config`` with ``to_dict()`` and ``forward(x, need_weights=False) -> (output, attention maps or None)``."""
        ...

    def training_batches(self, h5_path: Path, config: RunConfig) -> tuple[BatchAt, LossFn]:
        """``batch_at(step)``, a pure function of seed and step (so a resume is exact), and the loss."""
        ...

    def validation(self, h5_path: Path, config: RunConfig) -> Validate:
        """The held-out ``MAIN_METRIC`` of the training curves, on validation data only (never the test split)."""
        ...

    def evaluate(self, model: nn.Module, h5_path: Path, stats: dict[str, Any], batch_size: int,
                 device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test-split metrics: the headline (``MAIN_METRIC`` and every ``REPORT_COLUMNS`` key) and the tables,
        name → a DataFrame (written as CSV; ``REPORT_BREAKDOWNS`` read them) or a dict of arrays (written as
        npz: ``attention`` as :func:`flexheads.tasks.evaluation.attention_record` makes it, ``samples`` (one row per
        test sample: what ``sample_metric`` reads, and ``group``, int64, the resampling unit of the report's
        bootstrap), and what the task's figure kinds read)."""
        ...

    def sample_metric(self, samples: Mapping[str, np.ndarray]) -> float:
        """``MAIN_METRIC`` of rows of ``evaluate``'s ``samples`` table (any multiset of its rows: a bootstrap
        resample repeats rows, and a repeated row counts again); of all rows it is ``evaluate``'s ``MAIN_METRIC``
        (to the 4 decimals of ``metrics/<run>.json``)."""
        ...


def check_task(task: object) -> list[str]:
    """What ``task`` lacks to satisfy :class:`Task`: one line per missing or mistyped member (empty: it does)."""
    kinds = {"SETTINGS": TaskSettings, "ARCHITECTURES": Mapping}  # the others: str, or Sequence for REPORT_* tables
    problems = []
    for name in Task.__annotations__:
        value = getattr(task, name, None)
        wanted = kinds.get(name, Sequence if name.startswith("REPORT_") and name != "REPORT_CAPTION" else str)
        if value is None:
            problems.append(f"missing constant {name}")
        elif not isinstance(value, wanted) or (wanted is Sequence and isinstance(value, str)):
            problems.append(f"{name} is a {type(value).__name__}, not a {wanted.__name__}")
    for name, member in vars(Task).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        wanted = list(inspect.signature(member).parameters)[1:]  # without self
        hook = getattr(task, name, None)
        if not callable(hook):
            problems.append(f"missing hook {name}({', '.join(wanted)})")
        elif len(inspect.signature(hook).parameters) != len(wanted):
            problems.append(f"hook {name} takes {list(inspect.signature(hook).parameters)}, expected {wanted}")
    columns = [key for key, *_ in getattr(task, "REPORT_COLUMNS", ())]
    if isinstance(getattr(task, "MAIN_METRIC", None), str) and task.MAIN_METRIC not in columns:
        problems.append(f"MAIN_METRIC {task.MAIN_METRIC!r} is not a key of REPORT_COLUMNS")
    return problems
