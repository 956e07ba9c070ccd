"""Report: comparison tables, thesis figures, the HTML page and its MLflow run, built only from stage outputs.

:func:`building` builds a report beside the previous one and swaps it in, so an interrupted report never leaves
new tables beside old figures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OUTPUTS = ("tables", "figures", "plots", "index.html")  # the report's outputs, in swap order: the page last
BUILDING_PREFIX = ".building-"  # hidden, so neither a person nor report_files takes it for output


@contextmanager
def building(out: Path, outputs: tuple[str, ...] = OUTPUTS) -> Iterator[Path]:
    """Yield a fresh empty folder ``<out>/.building-XXXX`` to write a whole report into (every name of
    ``outputs``: by default ``OUTPUTS``, the tables alone for ``report --from-tracking``); when the block ends
    normally, move each output into ``out`` by rename, replacing the old one, ``index.html`` last, then remove the
    folder.

    If the block raises (or is missing an output) the folder is removed and ``out`` is left as it was.  A folder
    left by a killed report (SIGKILL skips this cleanup) is removed when the next report starts, so two reports
    must not build into the same ``out`` at once.  Each rename is atomic; the swap as a whole is not, but it is
    only a few renames long.
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{BUILDING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    build = Path(tempfile.mkdtemp(prefix=BUILDING_PREFIX, dir=out))
    try:
        yield build
        _swap_in(build, out, outputs)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _swap_in(build: Path, out: Path, outputs: tuple[str, ...]) -> None:
    """Move ``build/<name>`` to ``out/<name>`` for each of ``outputs``; the old ones go to ``build/.previous``."""
    missing = [name for name in outputs if not (build / name).exists()]
    if missing:
        raise RuntimeError(f"the report build in {build} lacks {missing}: the previous report is kept")
    previous = build / ".previous"
    previous.mkdir()
    for name in outputs:
        new, target = build / name, out / name
        if (new.is_dir() or target.is_dir()) and (target.exists() or target.is_symlink()):
            os.replace(target, previous / name)  # rename(2) cannot replace a folder: move the old one aside first
        os.replace(new, target)  # a file replaces the old file atomically
