"""Stable hashed splits, shared by every task's ``prepare``: which keys (patients, sequences, images) are held out.

A key's place is a pure function of ``(salt, key)`` — the first 8 bytes of SHA-256 — so it is the same on every
machine and does not depend on the order or the number of keys: adding data never moves a key between splits, and
prepared files stay byte-identical for the same params.

* :func:`hash_fraction`: a key's number in [0, 1);
* :func:`held_out`: the keys whose number falls below a fraction (a task's validation split);
* :func:`hashed_splits`: ``train``/``val``/``test`` per row of a key column (cxr's patient-level splits);
* :func:`require_held_out`: the ``ParamsError`` of a validation split that came out empty;
* :func:`check_val_fraction`: the settings' cross-section check that curves have a validation split to score.

Light on purpose (no pandas at import): the tasks' settings modules, which every stage loads, import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flexheads.errors import ParamsError

if TYPE_CHECKING:
    import pandas as pd


def hash_fraction(key: str, salt: str) -> float:
    """A number in [0, 1) fixed by (salt, key): the first 8 bytes of SHA-256(``salt/key``) over 2^64."""
    digest = hashlib.sha256(f"{salt}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def held_out(keys: Iterable[str], fraction: float, salt: str) -> set[str]:
    """The keys with ``hash_fraction(key, salt) < fraction`` (about ``fraction`` of them; none at 0)."""
    return {key for key in keys if hash_fraction(key, salt) < fraction}


def hashed_splits(keys: pd.Series, test_fraction: float, val_fraction: float, salt: str) -> pd.Series:
    """``train``/``val``/``test`` per row by key: test where the key is :func:`held_out` with ``test_fraction`` and
    salt ``salt/test``, else val where it is with ``val_fraction`` and salt ``salt/val``, else train."""
    unique = keys.unique()
    test = held_out(unique, test_fraction, f"{salt}/test")
    val = held_out([key for key in unique if key not in test], val_fraction, f"{salt}/val")
    split = {key: "test" if key in test else "val" if key in val else "train" for key in unique}
    return keys.map(split).rename("split")


def require_held_out(held: set[str], total: int, fraction: float, key: str, pool: str, remedy: str) -> None:
    """``ParamsError`` naming ``key`` when ``fraction`` > 0 held out none of the ``total`` keys of ``pool`` (e.g.
    "training sequences"; a validation split is empty only when asked to be: ``fraction`` 0, allowed without
    curves), or all of them (nothing left to train on)."""
    if fraction > 0 and not held:
        raise ParamsError(f"{key}: {fraction} of the {total} {pool} gave an empty validation split; raise {key} or "
                          f"{remedy}")
    if total and len(held) == total:
        raise ParamsError(f"{key}: {fraction} of the {total} {pool} held out all of them for validation, leaving "
                          f"nothing to train on; lower {key}")


def check_val_fraction(task: str, val_fraction: float, eval_every: int) -> None:
    """``ValueError`` naming both keys when ``data.<task>.val_fraction`` is 0 but ``train.<task>.eval_every`` asks
    for validation curves: they are drawn on the validation split only, never on the test split."""
    if val_fraction == 0 and eval_every > 0:
        raise ValueError(f"data.{task}.val_fraction is 0 (no validation split) but train.{task}.eval_every is "
                         f"{eval_every}: validation curves need a validation split (they never score the test "
                         f"split); set data.{task}.val_fraction > 0 (e.g. 0.1) or train.{task}.eval_every: 0")
