"""Fetching public datasets: resumable, verified downloads.

``download_file`` streams into ``<dest>.part``, resumes a partial file with an HTTP ``Range`` request, checks size
and digests, and only then renames onto ``dest``: a file at ``dest`` is always complete and verified (when
checksums were given), so a killed stage never leaves something DVC or Snakemake would trust.  Archives are
unpacked by ``flexheads.data.extract``.

Only the standard library talks to the network (``urllib.request``), so no dependency is added for it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from flexheads.errors import DataError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "RemoteFile",
    "download_file",
    "file_digest",
]

USER_AGENT = "flexheads-downloader/0.1 (+urllib)"
# 408 (timeout) and 429 (rate limit) are worth a retry; every other 4xx will answer the same again.
_RETRYABLE_CLIENT_ERRORS = (408, 429)
_TRANSIENT_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class DownloadError(DataError, RuntimeError):
    """A URL could not be fetched (HTTP error, or network errors that outlasted the retries)."""


class ChecksumError(DataError):
    """A downloaded file's size or digest differs from the expected one."""


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
