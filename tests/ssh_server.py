"""A throwaway OpenSSH server on 127.0.0.1 for tests that need a real SSH endpoint (the DVC remote over SSH).

Everything it uses lives in one temporary folder: its host key, the one user key it accepts, its sshd_config, pid
file and log. Nothing in /etc/ssh or ~/.ssh is read or written. Where `sshd` is not installed the test skips.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
START_TIMEOUT_S = 30


@dataclass(frozen=True)
class LoopbackSSHD:
    """A running sshd: ``user`` (the one running the tests) logs in on ``port`` with ``client_key`` only."""

    user: str
    port: int
    client_key: Path
    home: Path  # an empty HOME for clients: no ~/.ssh/config, keys or known_hosts of the developer's

    def url(self, path: Path) -> str:
        """``ssh://user@127.0.0.1:port/abs/path`` of a folder on this server."""
        return f"ssh://{self.user}@{HOST}:{self.port}{path.resolve()}"

    def client_env(self) -> dict[str, str]:
        """The environment for a client that must log in with ``client_key`` alone: the empty HOME, no SSH agent."""
        env = {key: value for key, value in os.environ.items() if key != "SSH_AUTH_SOCK"}
        return {**env, "HOME": str(self.home)}


def _sshd_binary() -> str:
    # Debian puts sshd in /usr/sbin, which is not on a non-root user's PATH; sshd re-executes itself by this path,
    # so it must be absolute.
    found = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))
    if not found or not shutil.which("ssh-keygen"):
        pytest.skip("sshd or ssh-keygen not installed (Debian: apt-get install openssh-server)")
    return str(Path(found).resolve())


def _keypair(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _config(folder: Path, user: str, port: int, host_key: Path, authorized_keys: Path) -> Path:
    config = folder / "sshd_config"
    config.write_text(f"""\
ListenAddress {HOST}
Port {port}
HostKey {host_key}
PidFile {folder / "sshd.pid"}
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
# keys only; root too, as by default
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# the keys sit below /tmp, which is world-writable: StrictModes would refuse them
StrictModes no
# in-process SFTP: no dependency on where the distribution installs sftp-server
Subsystem sftp internal-sftp
""")
    return config


def _check(sshd: str, config: Path) -> None:
    """``sshd -t``; as root, first create the privilege separation directory it names if missing (what Debian's
    ssh.service does at boot: containers often have no /run/sshd)."""
    test = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    missing = re.search(r"Missing privilege separation directory: (\S+)", test.stderr)
    if missing and os.geteuid() == 0:
        Path(missing[1]).mkdir(mode=0o755, parents=True, exist_ok=True)
        test = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    if test.returncode != 0:
        pytest.fail(f"sshd -t -f {config} rejected the test server's config: {test.stderr.strip()}")


def _wait_for_banner(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sshd exited with {process.returncode} before listening; {log}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                if s.recv(4) == b"SSH-":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"sshd did not answer on {HOST}:{port} within {START_TIMEOUT_S} s; {log}: {log.read_text()[-2000:]}")


@contextmanager
def loopback_sshd(folder: Path) -> Iterator[LoopbackSSHD]:
    """Start ``sshd -D`` on a free port of 127.0.0.1 with keys and config made in ``folder``; stop it on exit.

    Skips the test where sshd is not installed; fails, with sshd's own words, where it is but does not start.
    """
    sshd = _sshd_binary()
    folder.mkdir(parents=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    client_key = _keypair(folder / "client_ed25519")
    authorized_keys = folder / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), authorized_keys)
    port = _free_port()
    config = _config(folder, user, port, _keypair(folder / "host_ed25519"), authorized_keys)
    _check(sshd, config)
    (folder / "home").mkdir()
    log = folder / "sshd.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_for_banner(process, port, log)
        yield LoopbackSSHD(user, port, client_key, folder / "home")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
