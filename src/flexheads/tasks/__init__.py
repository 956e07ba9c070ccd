"""The task registry: which tasks exist, their params.yaml sections, and their stage code.

A built-in task is two modules: ``flexheads.tasks.settings.<name>`` (its params.yaml sections, light) and
``flexheads.tasks.<name>`` (its hooks and report declarations, :class:`~flexheads.tasks.base.Task`).  Validating
params.yaml loads every task's settings; a stage loads only its own task's module, by name, so
``flexheads.code_deps`` counts exactly that code.  A task defined elsewhere (a plugin, a test) joins with
:func:`register`.
"""

from __future__ import annotations

import importlib
from flexheads.errors import ParamsError
from flexheads.tasks.base import Task, TaskSettings, check_task

BUILTIN_TASKS = ("pose3d", "pose2d", "cxr")  # modules of flexheads.tasks, in report order
_registered: dict[str, Task] = {}  # tasks added with register()


def register(task: Task) -> None:
    """Make ``task`` (any object satisfying :class:`Task`) a task that params.yaml may list.

    Raises:
        ValueError: ``task`` does not satisfy the protocol (every problem named), or its name is taken.
    """
    problems = check_task(task)
    if problems:
        raise ValueError(f"task {getattr(task, 'NAME', task)!r} does not satisfy flexheads.tasks.Task: "
                         + "; ".join(problems))
    if task.NAME in BUILTIN_TASKS or task.NAME in _registered:
        raise ValueError(f"a task named {task.NAME!r} is already registered")
    _registered[task.NAME] = task


def unregister(name: str) -> None:
    """Remove a task added with :func:`register`."""
    del _registered[name]


def registered_tasks() -> tuple[str, ...]:
    """The names params.yaml may list under ``experiment.tasks``: the built-in tasks, then the registered ones."""
    return BUILTIN_TASKS + tuple(_registered)


def task_settings(name: str) -> TaskSettings:
    """The params.yaml sections of task ``name`` (loads only its light settings module)."""
    if name in _registered:
        return _registered[name].SETTINGS
    return importlib.import_module(f"flexheads.tasks.settings.{require_task(name)}").SETTINGS


def get_task(name: str) -> Task:
    """Task ``name``'s hooks and declarations (the module ``flexheads.tasks.<name>`` for a built-in task)."""
    if name in _registered:
        return _registered[name]
    return importlib.import_module(f"flexheads.tasks.{require_task(name)}")  # type: ignore[return-value]



def require_task(name: str) -> str:
    """``name`` if it is a registered task; ParamsError (a ValueError) listing the tasks otherwise."""
    if name not in registered_tasks():
        raise ParamsError(f"unknown task '{name}'; tasks are: {', '.join(registered_tasks())}")
    return name


__all__ = ["BUILTIN_TASKS", "Task", "TaskSettings", "check_task", "get_task", "register", "registered_tasks",
           "require_task", "task_settings", "unregister"]
