"""Task wiring: one module per task with its stage workers (download, prepare, train data, evaluate).

A task module is loaded by name, so a stage loads only its own task's code (``flexheads.code_deps`` relies on it).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from flexheads.config import TASKS, Params, ParamsError


def task_module(task: str) -> ModuleType:
    """``flexheads.tasks.<task>``; ParamsError naming the valid tasks for any other name."""
    if task not in TASKS:
        raise ParamsError(f"unknown task '{task}'; tasks are: {', '.join(TASKS)}")
    return importlib.import_module(f"flexheads.tasks.{task}")


def task_data(params: Params, task: str) -> Any:
    """The ``data.<task>`` section of params.yaml."""
    return getattr(params.data, task)
