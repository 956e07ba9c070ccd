"""Atomic writes: a temporary file beside the target, renamed on success, removed on error or by the next write."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexheads.io import atomic_path, partial_prefix, write_text


def test_success_renames_and_leaves_nothing_else(tmp_path: Path) -> None:
    write_text(tmp_path / "a.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_error_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert (tmp_path / "a.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_next_write_removes_what_a_killed_writer_left_and_only_that(tmp_path: Path) -> None:
    target, other = tmp_path / "model[1].pt", tmp_path / "model.pt"
    killed = tmp_path / f"{partial_prefix(target)}x1y2.pt"  # what SIGKILL leaves mid-write
    foreign = tmp_path / f"{partial_prefix(other)}abcd.pt"  # another target's writer, maybe still running
    killed.write_bytes(b"half")
    foreign.write_bytes(b"half")
    assert killed.name.startswith(".model[1].pt.partial-")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert not killed.exists()
    assert foreign.exists()
