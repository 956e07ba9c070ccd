"""What the fault-injection tests share: the CLI killed at a chosen point, under the orchestrators too, and the
checks every rerun must pass (no temporary file, no RUNNING MLflow run, outputs byte for byte)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

INJECT = Path(__file__).with_name("inject.py")
FLEXHEADS = [sys.executable, "-m", "flexheads.cli"]


def flexheads(project: Path, *args: str, point: str | None = None) -> subprocess.CompletedProcess:
    """``flexheads <args>`` in ``project``; with ``point``, killed there with SIGKILL (see inject.py)."""
    command = [sys.executable, str(INJECT), point, *args] if point else [*FLEXHEADS, *args]
    return subprocess.run(command, cwd=project, capture_output=True, text=True)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def assert_killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -9, f"{result.args} was not killed ({result.returncode}):\n{result.stderr[-3000:]}"


def shim_env(bin_dir: Path, command: str, point: str) -> dict[str, str]:
    """An environment whose ``flexheads`` (for Snakemake's and DVC's shell commands) kills ``flexheads <command>``
    at ``point``; every other command runs normally."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "flexheads"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "{command}" ]; then exec "{sys.executable}" "{INJECT}" "{point}" "$@"; fi\n'
        f'exec "{sys.executable}" -m flexheads.cli "$@"\n'
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def partial_files(project: Path) -> list[Path]:
    """Temporary files of atomic writes and unfinished report builds anywhere in the project's outputs."""
    roots = [project / name for name in ("data", "models", "metrics", "reports")]
    return sorted(p for root in roots if root.exists() for p in root.rglob("*")
                  if ".partial-" in p.name or p.name.startswith(".building-"))


def run_statuses(project: Path) -> dict[str, list[str]]:
    """MLflow run name → the statuses of its runs, oldest first, in the project's local store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    statuses: dict[str, list[str]] = {}
    for experiment in client.search_experiments():
        for run in sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time):
            statuses.setdefault(run.info.run_name, []).append(run.info.status)
    return statuses


def assert_no_running_run(project: Path) -> None:
    running = {name: s for name, s in run_statuses(project).items() if "RUNNING" in s}
    assert not running, f"MLflow runs left RUNNING: {running}"


def file_bytes(folder: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
