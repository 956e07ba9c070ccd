"""Atomic file output: every stage writes to a temporary file beside the target and renames it.

An interrupted stage therefore leaves either the old file or none, never a half-written one that DVC or
Snakemake would trust.  A temporary file is named ``.<target name>.partial-<random><suffix>``: DVC ignores the
pattern (``.dvcignore``), so one left by a killed process never counts into a folder output, and the next write
of the same target removes it.  A generator that fills a whole folder starts from :func:`empty_output_folder`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from flexheads.errors import DataError

PARTIAL = ".partial-"  # marks a temporary file: .<target name>.partial-<random><suffix>


def partial_prefix(path: Path) -> str:
    """The name prefix of ``path``'s temporary files (``.model.pt.partial-``)."""
    return f".{path.name}{PARTIAL}"


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it onto ``path``, on error delete it.

    Temporary files of ``path`` left by a killed writer are removed first (one writer per target: each output
    belongs to one stage).  ``suffix`` defaults to ``path``'s own, for writers that pick a format from the file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f"{glob.escape(partial_prefix(path))}*"):
        leftover.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=partial_prefix(path), suffix=suffix or path.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically and byte-reproducibly: torch names the zip's folder after the file it writes
    to, so saving to the random temporary name would make identical weights differ byte for byte (and look
    changed to DVC); an in-memory buffer gets the fixed name ``archive``."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_torch(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, so no code from the file runs.

    Raises:
        DataError: ``path`` is not ``what`` (e.g. "a checkpoint"): unreadable, truncated, or holding other objects.
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's own text advises weights_only=False: never repeat that
        raise DataError(f"{path}: not {what} (not a torch file, or one holding more than tensors and plain "
                        "containers)") from None
    except (RuntimeError, OSError, EOFError) as err:
        raise DataError(f"{path}: not {what} ({first_line(err)})") from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def replace_with_symlink(src: Path, dst: Path) -> Path:
    """Point ``dst`` at ``src`` with a relative symlink, replacing what ``dst`` was (a stage output, e.g. a folder
    of synthetic images) atomically: the link is made beside ``dst`` and renamed onto it."""
    if not src.exists():
        raise DataError(f"{src}: missing (expected after the download)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    tmp = dst.with_name(f"{partial_prefix(dst)}link")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), tmp, target_is_directory=src.is_dir())
    os.replace(tmp, dst)
    return dst


def empty_output_folder(folder: str | Path) -> Path:
    """Make ``folder`` an existing, empty folder of its own: every entry in it is deleted, and nothing else.

    A link in it (e.g. to a real download, or a hard link to a user's file) is unlinked, never followed; a
    ``folder`` that is itself a symlink is replaced by a real folder rather than emptied through. A folder holding
    the working directory or the home folder (``--out .`` by mistake) is refused.

    Returns:
        ``folder``.

    Raises:
        DataError: naming ``folder``, when it holds the working directory or the home folder.
    """
    folder = Path(folder)
    if folder.is_symlink():
        folder.unlink()
    for kept in (Path.cwd(), Path.home()):
        if kept.resolve().is_relative_to(folder.resolve()):
            raise DataError(f"{folder}: refusing to empty a folder that holds {kept}; pass a folder of its own")
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return folder


def read_json(path: str | Path) -> Any:
    """The JSON value at ``path``; ``DataError`` naming the file when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable JSON ({err})") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object at ``path``; ``{}`` if it is missing, unreadable or not an object (a marker to redo)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
