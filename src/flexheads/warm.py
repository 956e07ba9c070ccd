"""A warm process for a Snakemake run: it imports torch and MLflow once and forks one child per command.

A default pipeline job is a short ``flexheads`` process, and importing what it needs (torch, MLflow) costs 4–7
CPU-seconds before its first step: about a third of the default run's CPU time. While Snakemake runs, the
Snakefile starts this server (:func:`start`, in ``onstart``) and sets ``FLEXHEADS_WARM`` to
its socket; the ``flexheads`` executable then hands its arguments, working folder, environment and standard streams
to the server (:func:`delegate`), which forks a child that runs the command in the pre-imported interpreter, and
the executable exits with the child's status.

The child is the command as a fresh process would run it:

* the same code: the server records every flexheads source file it imported, and refuses (the command then runs
  cold, in its own process) once one has changed, or when the client's interpreter or ``sys.path`` differ;
* the same state: the server runs no torch op (no thread pool, no CUDA context) and seeds nothing; the child gets
  the client's folder, environment, argv and streams, and default signal handlers;
* the same ending: a command that exits joins its threads, runs the ``atexit`` functions and flushes its streams as
  an interpreter's shutdown does, then leaves with ``os._exit``, as a multiprocessing child does.  The rest of a
  shutdown, tearing down every module the server imported, would write to each of their objects and so copy the
  server's whole heap into the child (0.6 CPU-s per command); an uncaught exception still takes the normal path;
* the same accounting: the server reaps its children, so their CPU time counts in the run's ``/usr/bin/time``.

SIGINT/SIGTERM/SIGHUP sent to the client reach the child; a client that dies takes the child's process group with
it; the server exits with its parent (Snakemake). Only the user can connect (the socket's folder is 0700). Any
failure in the hand-over makes the command run cold: the server speeds commands up and never decides an outcome.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import gc
import importlib
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "FLEXHEADS_WARM"  # path of the server's socket; unset: every command runs in its own process
PRELOAD = (  # what the pipeline's commands import before their first step (train, evaluate, report)
    "torch", "torch._dynamo", "h5py", "numpy", "pandas", "pyarrow",  # torch's optimisers import torch._dynamo
    "mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "alembic.command", "alembic.config",
    "sqlalchemy.dialects.sqlite",
    "matplotlib", "matplotlib.pyplot",
    "flexheads.cli", "flexheads.stages", "flexheads.tracking", "flexheads.train",
    "flexheads.tasks.pose3d", "flexheads.tasks.pose2d", "flexheads.tasks.cxr", "flexheads.tasks.evaluation",
    "flexheads.explain",
)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
HEADER = struct.Struct("!Q")  # byte length of the JSON request that follows the header


@dataclass(frozen=True)
class Job:
    """One command handed over by a client: what the child becomes."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    path: list[str]  # the client's sys.path: the same as the server's but for [0], the script's folder
    streams: list[int]  # the client's stdin, stdout and stderr, received as file descriptors


def available() -> bool:
    """The server forks a torch-importing process: Linux only (macOS forbids fork after some of its frameworks)."""
    return sys.platform == "linux"


def start() -> subprocess.Popen | None:
    """Start a server for this process's future children and point ``$FLEXHEADS_WARM`` at it; ``None`` off Linux or
    when ``FLEXHEADS_WARM`` is already set (``FLEXHEADS_WARM=off`` runs every command in its own process).
    Commands that start before the server listens (it imports for a few seconds) simply run cold."""
    if not available() or os.environ.get(ENV):
        return None
    path = Path(tempfile.mkdtemp(prefix="flexheads-warm-")) / "socket"  # mkdtemp's folder is 0700
    server = subprocess.Popen([sys.executable, "-m", "flexheads.warm", str(path), str(os.getpid())],
                              stdin=subprocess.DEVNULL)
    os.environ[ENV] = str(path)
    return server


def stop(server: subprocess.Popen | None) -> None:
    """Stop a server of :func:`start` and wait for it (its children's CPU time then counts in this process's)."""
    if server is None:
        return
    path = Path(os.environ.pop(ENV))
    server.terminate()
    server.wait()
    shutil.rmtree(path.parent, ignore_errors=True)


# -- client --------------------------------------------------------------------------------------------------------

def delegate(argv: list[str]) -> int | None:
    """Run ``argv`` (``["flexheads", ...]``) in a child of the server named by ``$FLEXHEADS_WARM`` and return its
    exit status, or ``None`` when there is no server or it refuses: the caller then runs the command itself."""
    path = os.environ.get(ENV)
    if not path or not available():
        return None
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(path)
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                              "executable": sys.executable, "path": sys.path}).encode()
        socket.send_fds(connection, [HEADER.pack(len(request))], [0, 1, 2])
        connection.sendall(request)
        replies = connection.makefile("r")
        reply = json.loads(replies.readline() or "{}")
    except (OSError, ValueError):
        return None
    if "pid" not in reply:
        return None  # refused (reply["refused"] says why): run cold
    child = reply["pid"]
    for number in FORWARDED:
        signal.signal(number, lambda received, _frame: _kill_group(child, received))
    try:
        return int(json.loads(replies.readline())["exit"])
    except (OSError, ValueError, KeyError):
        print(f"flexheads: the warm server lost command {argv[1:2]} (pid {child})", file=sys.stderr)
        return 1


# -- server --------------------------------------------------------------------------------------------------------

class Server:
    """The server's state: its socket, the clients whose children run, and what it did (printed when it stops)."""

    def __init__(self, path: Path, parent: int) -> None:
        self.path, self.pid, self.parent = path, os.getpid(), parent
        self.sources = source_stamps()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.clients: dict[int, socket.socket] = {}  # child pid → its client's connection
        self.forked = 0
        self.refused: collections.Counter[str] = collections.Counter()  # why commands were sent back to run cold

    def loop(self) -> Job:
        """Serve until the parent exits; return only in a forked child, with its job."""
        try:
            while os.getppid() == self.parent:
                for key, _ in self.selector.select(timeout=0.1):
                    if key.fileobj is self.listener:
                        job = self.accept()
                        if job is not None:
                            return job  # in the child
                    elif _hung_up(key.fileobj):  # the client died before its child finished: stop the child
                        _kill_group(key.data)
                        self.selector.unregister(key.fileobj)
                self.reap()
        finally:
            if os.getpid() == self.pid:
                self.close()
        raise SystemExit(0)

    def accept(self) -> Job | None:
        """Take one request; fork its child, or tell the client why not. Returns the job in the child only."""
        connection, _ = self.listener.accept()
        connection.settimeout(10)
        streams: list[int] = []
        try:
            header, streams, _, _ = socket.recv_fds(connection, HEADER.size, 3)
            request = json.loads(_receive(connection, HEADER.unpack(header)[0]))
            reason = refusal(request, self.sources) or (None if len(streams) == 3 else "no standard streams")
            if reason:
                self.refused[reason] += 1
                connection.sendall(json.dumps({"refused": reason}).encode() + b"\n")
            elif (pid := os.fork()) == 0:
                for other in (self.selector, self.listener, connection, *self.clients.values()):
                    other.close()
                return Job(argv=request["argv"], cwd=request["cwd"], env=request["env"], path=request["path"],
                           streams=streams)
            else:
                try:
                    connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                except OSError:
                    _kill_group(pid)
                    raise
                self.forked += 1
                self.clients[pid] = connection
                self.selector.register(connection, selectors.EVENT_READ, pid)
                connection = None  # kept: reap() answers on it
        except (OSError, ValueError, KeyError):
            pass  # the client runs the command cold (or, if its child started, hangs up and the loop stops it)
        for fd in streams:
            _close(fd)
        if connection is not None:
            connection.close()
        return None

    def reap(self) -> None:
        """Collect finished children and send each one's exit status to its client."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self.clients.pop(pid, None)
            if connection is not None:
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"exit": _exit_code(status)}).encode() + b"\n")
                with contextlib.suppress(KeyError):
                    self.selector.unregister(connection)
                connection.close()

    def close(self) -> None:
        """Stop the children still running, remove the socket, and say what the server did."""
        for child in self.clients:
            _kill_group(child)
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # start()'s folder: gone too when the parent died without stop()
            self.path.parent.rmdir()
        reasons = "".join(f"; {count} cold: {reason}" for reason, count in self.refused.items())
        print(f"flexheads warm server: {self.forked} command(s) forked, {_cpu_seconds(resource.RUSAGE_CHILDREN):.0f} "
              f"CPU-s in them, {_cpu_seconds(resource.RUSAGE_SELF):.0f} in the server{reasons}", file=sys.stderr)


def serve(path: Path, parent: int) -> Job:
    """Import what the commands need, then serve on the socket ``path`` until the process ``parent`` is no longer
    this one's parent; return only in a forked child, with the job it must run."""
    signal.signal(signal.SIGTERM, _exit)  # stop(): leave through the `finally` that stops children
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # e.g. no MLflow where tracking is off: its commands import less
            importlib.import_module(name)
    gc.freeze()  # what the imports made stays out of the children's collections: fewer copy-on-write pages
    return Server(path, parent).loop()


def refusal(request: dict, sources: dict[str, tuple[int, int]]) -> str | None:
    """Why the child would not be the command a fresh process runs, or ``None``."""
    executable = request.get("executable") or ""
    if os.path.realpath(executable) != os.path.realpath(sys.executable) or request.get("path", [])[1:] != sys.path[1:]:
        return "the client's interpreter or sys.path differ from the server's"
    if _interpreter_settings(request.get("env", {})) != _interpreter_settings(os.environ):
        return "the client's PYTHON* variables (set when an interpreter starts) differ from the server's"
    if request.get("argv", [None])[0] != "flexheads":
        return "only flexheads commands are served"
    changed = [path for path, stamp in sources.items() if _stamp(path) != stamp]
    return f"source changed since the server started: {changed[0]}" if changed else None


def source_stamps() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every flexheads module imported so far: the code a child would run."""
    package = os.path.dirname(__file__) + os.sep
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    return {path: _stamp(path) for path in files if path and path.startswith(package)}


# -- child ---------------------------------------------------------------------------------------------------------

def run(job: Job) -> None:
    """Become the client's command: its process group, folder, environment, streams and argv; then run it."""
    os.setpgid(0, 0)
    for number in FORWARDED:
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(job.cwd)
    os.environ.clear()
    os.environ.update(job.env)
    for target, fd in enumerate(job.streams):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1 if os.isatty(1) else -1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    sys.argv, sys.path[:] = list(job.argv), job.path
    from flexheads.cli import app

    try:
        app(args=job.argv[1:], prog_name="flexheads")
    except SystemExit as exit_:
        _leave(exit_.code)
    _leave(0)


def main() -> None:
    """``python -m flexheads.warm SOCKET PARENT_PID``: serve until the parent exits; a forked child runs its job."""
    sys.path[0] = os.path.dirname(sys.executable)  # not `-m`'s working folder: a client's [0] is its script's
    run(serve(Path(sys.argv[1]), int(sys.argv[2])))


# -- helpers -------------------------------------------------------------------------------------------------------

def _interpreter_settings(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith("PYTHON")}


def _receive(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 16))
        if not chunk:
            raise OSError("the client hung up mid-request")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _stamp(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (-1, -1)
    return (stat.st_mtime_ns, stat.st_size)


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _exit_code(status: int) -> int:
    """A shell's exit status: the child's code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _leave(code: object) -> None:
    """End the child as the interpreter ends on ``SystemExit(code)``, but for the teardown of modules and objects."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # join non-daemon threads, as the interpreter does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit((code or 0) & 0xFF)


def _exit(_number: int, _frame: object) -> None:
    raise SystemExit(0)


def _hung_up(connection: socket.socket) -> bool:
    """A client sends nothing after its request: its socket turns readable only when it closes."""
    try:
        return not connection.recv(1)
    except OSError:
        return True


def _kill_group(pid: int, number: int = signal.SIGTERM) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, number)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


if __name__ == "__main__":
    main()
