"""Run the ``flexheads`` CLI and SIGKILL it at a chosen point: ``python inject.py <point> <flexheads args...>``.

The kill is real (the process gets SIGKILL: no ``finally``, no atexit, no flush); only its moment is chosen:

* ``call:<module>:<function>:<k>``: at the k-th call of ``<module>.<function>`` (a method: ``Class.method``;
  e.g. the 15th step (its gradient clipping):
  ``call:torch.nn.utils:clip_grad_norm_:15``; the sealing of a prepared file: ``call:flexheads.tasks.pose3d:seal:1``);
* ``rename:<name>:<k>``: just before the k-th atomic rename onto a file called ``<name>`` (its temporary file is
  complete on disk);
* ``write:<name>:<k>``: halfway through writing the k-th temporary file of ``<name>`` (half its bytes on disk).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def on_kth(k: int, condition: Callable[..., bool]) -> Callable[..., bool]:
    """A predicate that is true on the k-th call for which ``condition`` holds."""
    seen = 0

    def kth(*args: Any) -> bool:
        nonlocal seen
        if not condition(*args):
            return False
        seen += 1
        return seen == k

    return kth


def arm(point: str) -> None:
    kind, *spec = point.split(":")
    if kind == "call":
        module_name, function, k = spec
        owner: Any = importlib.import_module(module_name)
        *path, name = function.split(".")  # a function or a method (``Tracker.log_artifact``)
        for part in path:
            owner = getattr(owner, part)
        real = getattr(owner, name)
        hit = on_kth(int(k), lambda: True)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if hit():
                die()
            return real(*args, **kwargs)

        setattr(owner, name, wrapped)
    elif kind == "rename":
        name, k = spec
        real_replace = os.replace
        hit = on_kth(int(k), lambda src, dst: Path(dst).name == name)

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            if hit(src, dst):
                die()
            real_replace(src, dst, **kwargs)

        os.replace = replace
    elif kind == "write":
        name, k = spec
        real_write = Path.write_bytes
        hit = on_kth(int(k), lambda path: path.name.startswith(f".{name}.partial-"))

        def write_bytes(self: Path, data: Any) -> int:
            if hit(self):
                real_write(self, bytes(data)[: len(data) // 2])
                die()
            return real_write(self, data)

        Path.write_bytes = write_bytes  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown injection point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from flexheads.cli import app

    app(sys.argv[2:], prog_name="flexheads")
