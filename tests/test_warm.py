"""The warm server runs a `flexheads` command as a fresh process would (same output, status and files) or sends it
back to run cold; it goes away with its parent. A real server process, real sockets and forks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexheads import warm

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not warm.available(), reason="the warm server forks: Linux only")


def wait_for(path: Path, present: bool = True, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while path.exists() != present:
        assert time.monotonic() < deadline, f"{path} {'never appeared' if present else 'stayed'}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server():
    """A server started as the Snakefile starts it; ``$FLEXHEADS_WARM`` names its socket while the tests run."""
    saved = os.environ.pop(warm.ENV, None)
    process = warm.start()
    socket_path = Path(os.environ[warm.ENV])
    wait_for(socket_path)
    yield process
    warm.stop(process)
    assert not socket_path.parent.exists() and warm.ENV not in os.environ
    if saved is not None:
        os.environ[warm.ENV] = saved


def flexheads(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flexheads", *args], cwd=REPO, capture_output=True, text=True,
                          env=env)


def delegated(*args: str) -> subprocess.CompletedProcess:
    """``flexheads args`` through :func:`warm.delegate` in a fresh client; exit status 100: the server refused."""
    client = f"import sys; from flexheads import warm; s = warm.delegate(['flexheads', *{list(args)!r}]); " \
             "sys.exit(100 if s is None else s)"
    return subprocess.run([sys.executable, "-c", client], cwd=REPO, capture_output=True, text=True)


def test_a_command_runs_in_a_child_with_the_output_and_status_of_a_fresh_process(server):
    cold = flexheads("runs", env={k: v for k, v in os.environ.items() if k != warm.ENV})
    served = delegated("runs")
    assert (served.returncode, served.stdout) == (0, cold.stdout) and cold.returncode == 0

    cold = flexheads("runs", "--params", "missing.yaml", env={k: v for k, v in os.environ.items() if k != warm.ENV})
    served = delegated("runs", "--params", "missing.yaml")
    assert (served.returncode, served.stderr) == (2, cold.stderr) and "missing.yaml" in cold.stderr


def test_the_executable_hands_its_command_over(server):
    served = flexheads("runs")
    assert served.returncode == 0 and "pose3d-standard-noam-0" in served.stdout


def test_a_changed_interpreter_setting_or_source_file_sends_the_command_back(tmp_path):
    request = {"argv": ["flexheads", "runs"], "executable": sys.executable, "path": sys.path, "env": dict(os.environ)}
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    stamps = {str(source): warm._stamp(str(source))}
    assert warm.refusal(request, stamps) is None
    assert "PYTHON" in warm.refusal({**request, "env": {**os.environ, "PYTHONHASHSEED": "7"}}, stamps)
    assert "interpreter" in warm.refusal({**request, "path": [*sys.path, "/elsewhere"]}, stamps)
    assert "only flexheads" in warm.refusal({**request, "argv": ["dvc", "repro"]}, stamps)
    source.write_text("x = 22\n")
    assert str(source) in warm.refusal(request, stamps)


def test_without_a_server_the_command_runs_itself(monkeypatch, tmp_path):
    monkeypatch.setenv(warm.ENV, str(tmp_path / "no-socket"))
    assert warm.delegate(["flexheads", "runs"]) is None
    monkeypatch.setenv(warm.ENV, "off")
    assert warm.delegate(["flexheads", "runs"]) is None and warm.start() is None


@pytest.mark.slow
def test_the_server_leaves_with_its_parent():
    """A Snakemake killed before its `onerror` leaves no server behind."""
    parent = subprocess.run(
        [sys.executable, "-c", "from flexheads import warm; print(warm.start().pid)"],
        capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != warm.ENV}, check=True)
    stat = Path(f"/proc/{parent.stdout.strip()}/stat")
    deadline = time.monotonic() + 120
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # running, not yet a zombie
        assert time.monotonic() < deadline, "the server outlived its parent"
        time.sleep(0.2)


@pytest.mark.parametrize(("code", "status", "stderr"), [(None, 0, ""), (3, 3, ""), ("bad input", 1, "bad input\n")])
def test_a_child_ends_as_the_interpreter_would_on_system_exit(code: object, status: int, stderr: str) -> None:
    """Threads joined, atexit functions run, buffered output flushed, the exit status of ``SystemExit(code)``."""
    child = ("import atexit, sys, threading, time; from flexheads import warm\n"
             "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\n"
             "atexit.register(print, 'atexit')\n"
             "print('buffered', end=' ')\n"
             f"warm._leave({code!r})\n"
             "print('never')")
    ended = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert (ended.returncode, ended.stdout, ended.stderr) == (status, "buffered thread\natexit\n", stderr)
