"""Fetching and unpacking public datasets: resumable, verified downloads and archive extraction that cannot escape.

* ``download_file`` streams into ``<dest>.part``, resumes a partial file with an HTTP ``Range`` request, checks
  size and digests, and only then renames onto ``dest``: a file at ``dest`` is always complete and verified
  (when checksums were given), so a killed stage never leaves something DVC or Snakemake would trust.
* ``safe_extract`` refuses, before writing anything, any member that would land outside the destination
  (absolute paths, ``..``, links out, device files) and extracts into a temporary folder beside the destination,
  moving the result into place only when every member is out.

Only the standard library talks to the network (``urllib.request``), so no dependency is added for it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from flexheads.errors import DataError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "RemoteFile",
    "UnsafeArchiveError",
    "download_file",
    "file_digest",
    "safe_extract",
]

USER_AGENT = "flexheads-downloader/0.1 (+urllib)"
# 408 (timeout) and 429 (rate limit) are worth a retry; every other 4xx will answer the same again.
_RETRYABLE_CLIENT_ERRORS = (408, 429)
_TRANSIENT_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class DownloadError(DataError, RuntimeError):
    """A URL could not be fetched (HTTP error, or network errors that outlasted the retries)."""


class ChecksumError(DataError):
    """A downloaded file's size or digest differs from the expected one."""


class UnsafeArchiveError(DataError):
    """An archive member would be written outside the extraction folder (or is a device file)."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where it lives and what it must hash to (``None`` where nothing is published)."""

    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


# --- digests --------------------------------------------------------------------------------------------------


def _digests(path: Path, algorithms: Iterable[str], chunk_size: int = 1 << 20) -> dict[str, str]:
    """Hex digests of ``path`` for every algorithm, in one pass over the file."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path`` (any ``hashlib`` algorithm name: ``'sha256'``, ``'md5'``, ...)."""
    return _digests(Path(path), [algorithm])[algorithm]


def _verify(path: Path, name: str, size: int | None, expected: Mapping[str, str]) -> None:
    """Raise ``ChecksumError`` naming ``name`` unless ``path`` has ``size`` bytes and the ``expected`` digests."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{name}: size mismatch: expected {size} bytes, got {actual_size} bytes")
    actual = _digests(path, expected)
    for algorithm, digest in expected.items():
        if actual[algorithm] != digest.lower():
            raise ChecksumError(f"{name}: {algorithm} mismatch: expected {digest.lower()}, got {actual[algorithm]}")


# --- download -------------------------------------------------------------------------------------------------


def download_file(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download and verifying the result.

    Bytes go to ``<dest>.part``; a part left by an interrupted run is continued with ``Range: bytes=N-`` (a server
    that answers 200 instead of 206 sends the whole file, and we start over). Size and digests are checked on the
    whole file; only then is it renamed onto ``dest``. A ``dest`` that already matches the given size/checksums is
    kept without a request (with no checksum and no size given, its presence is enough: it can only have been
    written by a completed rename).

    Args:
        sha256, md5, size: expected values; each one given is checked.
        timeout: seconds a connect or a read may stall before the attempt counts as failed.
        retries: further attempts after a network error or a 5xx/408/429 answer, each resuming the part file,
            waiting ``backoff * 2**k`` seconds before the k-th retry. Other HTTP errors (404, 403) fail at once.
        progress: a byte progress bar (hidden anyway when stderr is not a terminal).

    Returns:
        ``dest``.

    Raises:
        DownloadError: naming the URL, when it cannot be fetched.
        ChecksumError: naming the file, expected and actual value; the part file is deleted.
    """
    dest = Path(dest)
    expected = {name: digest for name, digest in (("sha256", sha256), ("md5", md5)) if digest}
    if dest.is_file():
        if not expected and size is None:
            return dest
        try:
            _verify(dest, str(dest), size, expected)
            return dest
        except ChecksumError:
            pass  # a stale or foreign file: download again and replace it
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = part.is_file() and part.stat().st_size > 0
    options = dict(size=size, chunk_size=chunk_size, timeout=timeout, progress=progress, desc=dest.name)
    _fetch_with_retries(url, part, retries=retries, backoff=backoff, **options)
    try:
        _verify(part, str(dest), size, expected)
    except ChecksumError:
        part.unlink(missing_ok=True)
        if not resumed:
            raise
        # A resumed part may stitch bytes of two versions of the remote file: one fresh download decides.
        _fetch_with_retries(url, part, retries=retries, backoff=backoff, **options)
        try:
            _verify(part, str(dest), size, expected)
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
    os.replace(part, dest)
    return dest


def _fetch_with_retries(url: str, part: Path, *, retries: int, backoff: float, **options) -> None:
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, **options)
            return
        except urllib.error.HTTPError as err:
            if err.code not in _RETRYABLE_CLIENT_ERRORS and err.code < 500:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            last_error = err
        except _TRANSIENT_ERRORS as err:
            last_error = err
        if attempt < retries:
            time.sleep(backoff * 2**attempt)
    raise DownloadError(f"{url}: failed after {retries + 1} attempts: {last_error}") from last_error


def _fetch(
    url: str, part: Path, *, size: int | None, chunk_size: int, timeout: float, progress: bool, desc: str
) -> None:
    """One HTTP request appending the rest of ``url`` to ``part`` (or rewriting it when the server cannot resume)."""
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:  # longer than the file can be: not a prefix of it
        part.unlink()
        offset = 0
    if offset and offset == size:
        return
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        # Range not satisfiable: the part is already whole (Content-Range: bytes */<total>) or not a prefix at all.
        total = re.fullmatch(r"bytes \*/(\d+)", err.headers.get("Content-Range", ""))
        err.close()
        if total and int(total.group(1)) == offset:
            return
        part.unlink()
        return _fetch(url, part, size=size, chunk_size=chunk_size, timeout=timeout, progress=progress, desc=desc)
    with response:
        if offset and response.status == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != offset:  # a range we did not ask for: start over cleanly
                part.unlink()
                response.close()
                return _fetch(url, part, size=size, chunk_size=chunk_size, timeout=timeout, progress=progress,
                              desc=desc)
        else:
            offset = 0  # 200: the server ignored Range and sends the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        received = offset
        with open(part, "ab" if offset else "wb") as handle, tqdm(
            total=total, initial=offset, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
            disable=None if progress else True,
        ) as bar:
            while chunk := response.read(chunk_size):
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if length is not None and received < total:
        # http.client returns a short body without raising when the peer closes early; the next attempt resumes.
        raise ConnectionError(f"connection closed after {received} of {total} bytes")


# --- extraction -----------------------------------------------------------------------------------------------


def safe_extract(
    archive: str | Path, dest: str | Path, *, members: Iterable[str] | None = None, progress: bool = True
) -> list[Path]:
    """Extract a zip or tar (.gz, .bz2, .xz) archive into ``dest``; no member may end up outside ``dest``.

    Every member is checked before anything is written: absolute names, ``..`` components, names passing through
    a link member, symbolic or hard links pointing outside, and device/FIFO members raise ``UnsafeArchiveError``.
    Members are extracted into a temporary folder beside ``dest`` (same file system) and then renamed into
    ``dest``, merging with folders already there (several ChestX-ray14 archives all fill ``images/``); an
    interrupted extraction leaves only the temporary folder, which the next call does not reuse. Tar members
    additionally go through ``tarfile``'s ``"data"`` filter where this Python has it (3.12, and 3.11.4+).

    Args:
        members: names to extract (a folder name selects everything under it); all members when ``None``.

    Returns:
        the paths of the extracted files (not folders) under ``dest``, in archive order.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            names = [info.filename for info in infos]
            _check_names(archive, names, links={})
            chosen = _select(archive, names, members)
            files = [name for info, name in zip(infos, names) if name in chosen and not info.is_dir()]
            with _staging(dest) as tmp:
                zf.extractall(tmp, members=_bar(archive, [n for n in names if n in chosen], progress))
                return _move_into(tmp, dest, files)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            infos = tf.getmembers()
            names = [info.name for info in infos]
            _check_tar_members(archive, infos)
            chosen = _select(archive, names, members)
            selected = [info for info in infos if info.name in chosen]
            files = [info.name for info in selected if not info.isdir()]
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            with _staging(dest) as tmp:
                tf.extractall(tmp, members=_bar(archive, selected, progress), **extra)
                return _move_into(tmp, dest, files)
    raise ValueError(f"{archive}: not a zip or tar archive")


def _bar(archive: Path, items: list, progress: bool):
    return tqdm(items, desc=f"extract {archive.name}", unit="file", disable=None if progress else True)


def _unsafe_reason(name: str) -> str | None:
    """Why ``name`` may not be written below the extraction folder, or ``None`` when it may."""
    parts = name.replace("\\", "/").split("/")  # a backslash is a separator to Windows tools: judge it as one
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in parts:
        return "has a '..' component"
    return None


def _check_names(archive: Path, names: list[str], links: Mapping[str, str]) -> None:
    """Raise ``UnsafeArchiveError`` for an unsafe name or one below a link member (``links``: link name → kind)."""
    for name in names:
        reason = _unsafe_reason(name)
        if reason:
            raise UnsafeArchiveError(f"{archive}: member {name!r} {reason}")
        parents = posixpath.normpath(name).split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            prefix = "/".join(parents[:depth])
            if prefix in links:
                raise UnsafeArchiveError(f"{archive}: member {name!r} lies below the {links[prefix]} {prefix!r}")


def _check_tar_members(archive: Path, infos: list[tarfile.TarInfo]) -> None:
    links = {}
    for info in infos:
        if info.ischr() or info.isblk() or info.isfifo():
            raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a device or FIFO")
        if info.issym() or info.islnk():
            kind = "symlink" if info.issym() else "hardlink"
            # A symlink resolves from its own folder, a hard link from the archive root.
            base = posixpath.dirname(info.name) if info.issym() else ""
            target = posixpath.normpath(posixpath.join(base, info.linkname))
            if info.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a {kind} to {info.linkname!r} "
                                         "outside the extraction folder")
            links[posixpath.normpath(info.name)] = kind
    _check_names(archive, [info.name for info in infos], links)


def _select(archive: Path, names: list[str], members: Iterable[str] | None) -> set[str]:
    """The member names to extract: each of ``members`` and everything below the folders among them."""
    if members is None:
        return set(names)
    wanted = {m.rstrip("/") for m in members}
    chosen, found = set(), set()
    for name in names:
        parts = name.rstrip("/").split("/")
        matches = wanted.intersection("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
        if matches:
            chosen.add(name)
            found |= matches
    if wanted - found:
        raise ValueError(f"{archive}: no members named {sorted(wanted - found)}")
    return chosen


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``dest`` (so moving out of it is a rename), removed on exit."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.extract-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into(tmp: Path, dest: Path, files: list[str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(tmp.iterdir()):
        _merge(entry, dest / entry.name)
    return [dest / posixpath.normpath(name) for name in files]


def _merge(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``; a folder onto an existing folder merges entry by entry (files replaced)."""
    if stat.S_ISDIR(src.lstat().st_mode) and dst.is_dir():
        for entry in src.iterdir():
            _merge(entry, dst / entry.name)
        src.rmdir()
    else:
        os.replace(src, dst)
