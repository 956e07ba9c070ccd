"""The prepared HDF5 file of a task (``data/prepared/<task>.h5``): sealed by ``prepare``, opened with clear errors.

``prepare`` ends by :func:`seal`-ing the file: root attributes ``task`` and ``content_sha256``, a SHA-256 over every
group's and dataset's name, attributes, dtype, shape and values, in name order.  Training records that hash in its
checkpoint, so a checkpoint resumes only on the very data it was trained on.  :func:`open_prepared` turns a
missing, empty, truncated or foreign file, and a read that fails inside it, into one :class:`DataError` that names
the file; :func:`read_split` reads whole datasets of one split group through it, naming any that is missing;
:func:`require_validation_split` refuses validation curves without validation rows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from flexheads.errors import DataError
from flexheads.io import first_line

CONTENT_HASH = "content_sha256"
TASK = "task"
BLOCK_BYTES = 1 << 26  # rows hashed per read: 64 MiB at most


@contextmanager
def open_prepared(path: str | Path, task: str | None = None) -> Iterator[h5py.File]:
    """``path`` opened read-only (and, given ``task``, checked to be that task's sealed file).

    Raises:
        DataError: the file is missing, is not a readable HDF5 file, was prepared for another task, or a read
            inside the ``with`` block fails (a truncated dataset); the message names the file.
    """
    path = Path(path)
    redo = f"rerun `flexheads prepare {task}`" if task else "rerun `flexheads prepare`"
    if not path.is_file():
        raise DataError(f"{path}: prepared file not found; {redo}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({first_line(err)}); {redo}") from None
    with h5:
        if task is not None and h5.attrs.get(TASK) != task:
            found = h5.attrs.get(TASK)
            raise DataError(f"{path}: prepared for task {found!r}, expected {task!r}; {redo}" if found else
                            f"{path}: not sealed by `flexheads prepare` (no '{TASK}' attribute); {redo}")
        try:
            yield h5
        except OSError as err:  # h5py reports a dataset cut short by a truncated file as OSError
            raise DataError(f"{path}: unreadable data ({first_line(err)}); {redo}") from None


def read_split(h5_path: str | Path, task: str, split: str, names: Iterable[str],
               optional: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """The datasets ``names`` of group ``split`` of ``task``'s prepared file, read whole, then those of
    ``optional`` that the group holds (e.g. cxr's lesion masks, which only synthetic data has).

    Raises:
        DataError: as :func:`open_prepared`, or the group or one of ``names`` is missing; the message names the
            file, the group and the dataset.
    """
    with open_prepared(h5_path, task) as h5:
        if split not in h5:
            raise DataError(f"{h5_path}: no '{split}' group; rerun `flexheads prepare {task}`")
        group = h5[split]
        names = list(names)
        for name in names:
            if name not in group:
                raise DataError(f"{h5_path}: no dataset '{split}/{name}'; rerun `flexheads prepare {task}`")
        return {name: group[name][:] for name in [*names, *(name for name in optional if name in group)]}


def require_validation_split(h5_path: str | Path, task: str, rows_dataset: str) -> None:
    """``DataError`` unless the ``val`` group of ``task``'s prepared file has rows (``val/<rows_dataset>`` is not
    empty): validation curves score the validation split only, never the test split."""
    with open_prepared(h5_path, task) as h5:
        rows = len(h5["val"][rows_dataset]) if "val" in h5 and rows_dataset in h5["val"] else 0
    if not rows:
        raise DataError(f"{h5_path}: no validation rows (prepared with data.{task}.val_fraction: 0?), and validation "
                        f"curves never score the test split; set data.{task}.val_fraction > 0 and rerun `flexheads "
                        f"prepare {task}`, or set train.{task}.eval_every: 0")


def seal(h5: h5py.File, task: str) -> str:
    """Mark ``h5`` (open for writing, complete) as ``task``'s prepared file and store its content hash; returns it."""
    h5.attrs[TASK] = task
    h5.attrs[CONTENT_HASH] = content_hash(h5)
    return h5.attrs[CONTENT_HASH]


def prepared_hash(path: str | Path, task: str) -> str:
    """The content hash :func:`seal` stored in ``task``'s prepared file at ``path`` (DataError if unsealed)."""
    with open_prepared(path, task) as h5:
        if CONTENT_HASH not in h5.attrs:
            raise DataError(f"{path}: no '{CONTENT_HASH}' attribute; rerun `flexheads prepare {task}`")
        return str(h5.attrs[CONTENT_HASH])


def content_hash(h5: h5py.File) -> str:
    """SHA-256 over the root attributes (except the hash itself) and every object below, in name order."""
    digest = hashlib.sha256()
    _add_attributes(digest, h5.attrs, skip=CONTENT_HASH)
    names: list[str] = []
    h5.visit(names.append)
    for name in sorted(names):
        obj = h5[name]
        digest.update(f"\0{name}\0".encode())
        _add_attributes(digest, obj.attrs)
        if isinstance(obj, h5py.Dataset):
            _add_dataset(digest, obj)
    return digest.hexdigest()


def _add_attributes(digest: "hashlib._Hash", attrs: h5py.AttributeManager, skip: str | None = None) -> None:
    for key in sorted(attrs):
        if key != skip:
            digest.update(f"{key}={np.asarray(attrs[key]).tolist()!r};".encode())


def _add_dataset(digest: "hashlib._Hash", dataset: h5py.Dataset) -> None:
    digest.update(f"{dataset.dtype.str}{dataset.shape}".encode())
    if dataset.shape == ():
        blocks: Iterator[np.ndarray] = iter([np.asarray(dataset[()])])
    else:
        row_bytes = dataset.dtype.itemsize * math.prod(dataset.shape[1:])
        rows = max(1, BLOCK_BYTES // max(1, row_bytes))
        blocks = (dataset[start : start + rows] for start in range(0, dataset.shape[0], rows))
    for block in blocks:
        if block.dtype.kind == "O":  # variable-length strings: the values, not the object pointers
            digest.update(b"\0".join(v if isinstance(v, bytes) else str(v).encode() for v in block.ravel()))
        else:
            digest.update(np.ascontiguousarray(block).tobytes())
