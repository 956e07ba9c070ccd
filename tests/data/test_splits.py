"""The stable hashed splits of ``flexheads.data.splits``: a key's split depends on the key and the salt only."""

from __future__ import annotations

import pandas as pd
import pytest

from flexheads.data import splits
from flexheads.errors import ParamsError


def test_hashed_splits_depend_on_the_key_only() -> None:
    patients = pd.Series([str(p) for p in range(2000)])
    split = splits.hashed_splits(patients, 0.2, 0.1, "covid")
    shuffled = patients.sample(frac=1.0, random_state=0)
    assert splits.hashed_splits(shuffled, 0.2, 0.1, "covid").sort_index().equals(split)
    assert split.value_counts(normalize=True)["test"] == pytest.approx(0.2, abs=0.03)
    assert split.value_counts(normalize=True)["val"] == pytest.approx(0.08, abs=0.03)  # 10% of the other 80%
    assert splits.hashed_splits(patients, 0.2, 0.1, "other").ne(split).any()


def test_hash_fraction_is_pinned() -> None:
    """The value prepared files were split with: changing the hash would move patients between splits."""
    assert splits.hash_fraction("17", "nih/val") == pytest.approx(0.27712237658721883, abs=1e-15)


def test_held_out_keeps_the_keys_below_the_fraction() -> None:
    keys = [f"S1/Walking {i}" for i in range(1000)]
    held = splits.held_out(keys, 0.1, "pose3d/val")
    assert held == {k for k in keys if splits.hash_fraction(k, "pose3d/val") < 0.1}
    assert len(held) == pytest.approx(100, abs=30) and splits.held_out(keys, 0.0, "pose3d/val") == set()
    assert splits.held_out(reversed(keys), 0.1, "pose3d/val") == held


def test_an_empty_or_total_held_out_split_names_the_key() -> None:
    splits.require_held_out(set(), 3, 0.0, "data.x.val_fraction", "things", "add things")  # asked for: fine
    with pytest.raises(ParamsError, match=r"data\.x\.val_fraction: 0\.1 of the 3 things .*empty.* add things"):
        splits.require_held_out(set(), 3, 0.1, "data.x.val_fraction", "things", "add things")
    with pytest.raises(ParamsError, match=r"nothing to train on; lower data\.x\.val_fraction"):
        splits.require_held_out({"a", "b"}, 2, 0.9, "data.x.val_fraction", "things", "add things")
