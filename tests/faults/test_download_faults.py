"""Fault injection on the download stage: a `flexheads download` process killed with SIGKILL mid-generation, then
rerun, leaves exactly what an uninterrupted run writes (same files, same bytes) and no temporary files, even when
the killed run used another seed and size.  Only the killed run is a subprocess (each pays torch's ~4 s import);
the others go through the same CLI in this process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flexheads.cli import app

REPO = Path(__file__).resolve().parents[2]
CLI = "from flexheads.cli import app; app()"


def _pose3d(raw: dict, size: int, seed: int) -> None:
    raw["data"]["pose3d"]["synthetic"].update(frames_per_sequence=size, seed=seed)


def _cxr(raw: dict, size: int, seed: int) -> None:
    raw["data"]["cxr"]["synthetic"].update(n_patients=size, n_covid_images=size // 4, image_size=64, seed=seed)


# task → (params edit, size of the killed run, size of the final run, entries of the output folder to wait for)
TASKS: dict[str, tuple[Callable[[dict, int, int], None], int, int, int]] = {
    "pose3d": (_pose3d, 100, 20, 1),  # two npz files written at the end: kill as the first one appears
    "cxr": (_cxr, 400, 12, 40),  # an image and a mask file at a time: kill among them
}


def _params(tmp_path: Path, task: str, size: int, seed: int) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    TASKS[task][0](raw, size, seed)
    path = tmp_path / f"params-{size}-{seed}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _arguments(task: str, out: Path, params: Path) -> list[str]:
    return ["download", task, "--out", str(out), "--params", str(params)]


def _download(task: str, out: Path, params: Path) -> None:
    result = CliRunner().invoke(app, _arguments(task, out, params))
    assert result.exit_code == 0, result.output[-3000:]


def _start_download(task: str, out: Path, params: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", CLI, *_arguments(task, out, params)]
    return subprocess.Popen(command, cwd=params.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _entries(root: Path) -> dict[str, bytes | None]:
    """Every entry below ``root``: a file's bytes, ``None`` for a folder."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _kill_when(process: subprocess.Popen, out: Path, entries: int, timeout_s: float = 60) -> bool:
    """SIGKILL ``process`` once ``out`` holds ``entries`` entries (any depth); whether it was still running then."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and sum(1 for _ in out.rglob("*")) >= entries:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.communicate(timeout=60)
    return process.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_killed_download_rerun_equals_an_uninterrupted_one(tmp_path: Path, task: str) -> None:
    _, killed_size, size, entries = TASKS[task]
    reference, out = tmp_path / "reference" / task, tmp_path / "raw" / task
    _download(task, reference, _params(tmp_path, task, size, seed=0))
    # The interrupted run draws another seed at another size, so anything it left would show in the comparison.
    # Where the machine is too fast to catch it mid-way it completes: the rerun must then replace all of it.
    killed = _kill_when(_start_download(task, out, _params(tmp_path, task, killed_size, seed=1)), out, entries)
    assert out.is_dir(), f"the {task} download wrote nothing before {'the kill' if killed else 'it ended'}"
    _download(task, out, _params(tmp_path, task, size, seed=0))
    assert _entries(out) == _entries(reference)
    assert not [p for p in out.rglob(".*")], "temporary files left behind"
