"""Atomic writes (a temporary file beside the target, renamed on success, removed on error or by the next write)
and output folders emptied without deleting through a link."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from flexheads.errors import DataError
from flexheads.io import atomic_path, empty_output_folder, load_torch, partial_prefix, write_text


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


def test_empty_output_folder_deletes_only_its_own_entries(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    (kept / "sub").mkdir(parents=True)
    (kept / "sub" / "file").write_text("kept")
    out = tmp_path / "out"
    (out / "deep" / "er").mkdir(parents=True)
    (out / "deep" / "er" / ".half.tmp").write_text("x")
    (out / "file").write_text("x")
    (out / "to_folder").symlink_to(kept)
    (out / "deep" / "to_file").symlink_to(kept / "sub" / "file")
    (out / "dangling").symlink_to(tmp_path / "nowhere")
    assert empty_output_folder(out) == out and list(out.iterdir()) == []
    assert (kept / "sub" / "file").read_text() == "kept"


def test_empty_output_folder_replaces_a_linked_folder_instead_of_emptying_through_it(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "data_3d_h36m.npz").write_text("a user's file")
    (tmp_path / "out").symlink_to(tmp_path / "real")
    empty_output_folder(tmp_path / "out")
    assert not (tmp_path / "out").is_symlink() and list((tmp_path / "out").iterdir()) == []
    assert (tmp_path / "real" / "data_3d_h36m.npz").read_text() == "a user's file"


def test_empty_output_folder_refuses_the_working_directory_and_its_parents(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "project" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")
    for folder in (Path("."), Path(".."), tmp_path, Path.home()):
        with pytest.raises(DataError, match="refusing to empty"):
            empty_output_folder(folder)
    assert (tmp_path / "project" / "data").is_dir()
    empty_output_folder("data")  # a folder below it is fine


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "not a model file (EOFError"),  # an empty file
    (_torch_bytes(Path("x")), "not a model file (not a torch file"),  # an object beyond tensors: never unpickled
    (_torch_bytes({"w": torch.ones(3)})[:200], "not a model file (PytorchStreamReader"),  # a file cut short
])
def test_load_torch_names_the_file_and_never_advises_an_unsafe_load(tmp_path: Path, content: bytes,
                                                                    reason: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_torch(path, "a model file")
    assert str(err.value).startswith(f"{path}: {reason}")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
