"""Fetching and unpacking public datasets: resumable, verified downloads and archive extraction that cannot escape.

* ``download_file`` streams into ``<dest>.part``, resumes a partial file with an HTTP ``Range`` request, checks
  size and digests, and only then renames onto ``dest``: a file at ``dest`` is always complete and verified
  (when checksums were given), so a killed stage never leaves something DVC or Snakemake would trust.
* ``safe_extract`` refuses, before writing anything, any member that would land outside the destination
  (absolute paths, ``..``, links out, device files), judged against the destination as it is on disk, links that
  earlier archives left there included; it extracts into a temporary folder beside the destination, moving the
  result into place only when every member is out.

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

_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit: a chain longer than this is a loop


@dataclass(frozen=True)
class _Member:
    """An archive member as extraction sees it: ``kind`` is "file", "dir", "symlink" or "hardlink"; ``target`` is a
    link's text (a symlink's relative to its own folder, a hard link's relative to the archive root)."""

    name: str
    kind: str
    target: str = ""


def safe_extract(
    archive: str | Path, dest: str | Path, *, members: Iterable[str] | None = None, progress: bool = True
) -> list[Path]:
    """Extract a zip or tar (.gz, .bz2, .xz) archive into ``dest``; no member may end up outside ``dest``.

    Every member is checked before anything is written, against the folder as it really is on disk (links that
    earlier archives or the user left in ``dest`` included) overlaid by the members before it: absolute names,
    ``..`` components, names passing through a link member of the same archive or through any link that leads
    outside, symbolic or hard links whose target resolves outside (following every link on the way, as the kernel
    would), and device/FIFO members raise ``UnsafeArchiveError``. Members are extracted into a temporary folder
    beside ``dest`` (same file system; the same checks are run against it) and then renamed into ``dest``, merging
    with folders already there (several ChestX-ray14 archives all fill ``images/``) and following a link in
    ``dest`` only where the checks resolved it inside; an interrupted extraction leaves only the temporary folder,
    which the next call does not reuse. The checks do not depend on ``tarfile``'s ``"data"`` filter (Python 3.10.0
    to 3.10.11 lack it); where it exists, tar members go through it as well.

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
            selected = [_Member(info.filename, "dir" if info.is_dir() else "file") for info in infos
                        if info.filename in chosen]  # fmt: skip
            with _staging(dest) as tmp:
                _check_paths(archive, selected, tmp, dest)
                zf.extractall(tmp, members=_bar(archive, [m.name for m in selected], progress))
                return _move_into(archive, tmp, dest, selected)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            infos = tf.getmembers()
            _check_tar_members(archive, infos)
            chosen = _select(archive, [info.name for info in infos], members)
            chosen_infos = [info for info in infos if info.name in chosen]
            selected = [_tar_member(info) for info in chosen_infos]
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            with _staging(dest) as tmp:
                _check_paths(archive, selected, tmp, dest)
                tf.extractall(tmp, members=_bar(archive, chosen_infos, progress), **extra)
                return _move_into(archive, tmp, dest, selected)
    raise ValueError(f"{archive}: not a zip or tar archive")


def _bar(archive: Path, items: list, progress: bool):
    return tqdm(items, desc=f"extract {archive.name}", unit="file", disable=None if progress else True)


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.issym():
        return _Member(info.name, "symlink", info.linkname)
    if info.islnk():
        return _Member(info.name, "hardlink", info.linkname)
    return _Member(info.name, "dir" if info.isdir() else "file")


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
    """Refuse device/FIFO members, absolute link targets and members below a link member of the archive."""
    links = {}
    for info in infos:
        if info.ischr() or info.isblk() or info.isfifo():
            raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a device or FIFO")
        if info.issym() or info.islnk():
            kind = "symlink" if info.issym() else "hardlink"
            if info.linkname.startswith("/"):
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


def _parts(path: str) -> list[str]:
    """The components of a relative POSIX path, without empty and ``.`` ones (``..`` kept: links resolve it)."""
    return [part for part in path.split("/") if part not in ("", ".")]


class _Tree:
    """A folder as extraction will find it: the entries on disk below ``root``, overlaid by the members placed so far.

    Paths are tuples of components below ``root``; ``resolve`` follows links the way the kernel does (a link's
    ``..`` leaves the folder the link points to, not the one it sits in) and answers ``None`` for a path that
    leaves ``root`` (or loops), so a check needs no lexical reasoning about links.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.placed: dict[tuple[str, ...], tuple[str, str]] = {}  # path → (kind, link text) of members so far

    def entry(self, path: tuple[str, ...]) -> tuple[str, str]:
        """``(kind, link text)`` at ``path`` (no link followed): kind "dir", "file", "symlink" or "missing"."""
        if path in self.placed:
            return self.placed[path]
        try:
            mode = os.lstat(self.root.joinpath(*path)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return "missing", ""
        if stat.S_ISLNK(mode):
            return "symlink", os.readlink(self.root.joinpath(*path))
        return ("dir" if stat.S_ISDIR(mode) else "file"), ""

    def resolve(self, parts: list[str], base: tuple[str, ...] = ()) -> tuple[str, ...] | None:
        """Where ``parts`` leads from the folder ``base``, every link on the way followed (the last one too);
        ``None`` when that is outside ``root``."""
        pending, here, hops = list(reversed(parts)), list(base), 0
        while pending:
            part = pending.pop()
            if part == "..":
                if not here:
                    return None
                here.pop()
                continue
            kind, text = self.entry((*here, part))
            if kind != "symlink":
                here.append(part)
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return None
            if text.startswith("/"):  # an absolute link on disk: inside only if it names a place below root
                if not Path(text).is_relative_to(self.root):
                    return None
                here, text = [], Path(text).relative_to(self.root).as_posix()
            pending.extend(reversed(_parts(text)))
        return tuple(here)


def _check_paths(archive: Path, members: list[_Member], staging: Path, dest: Path) -> None:
    """Raise ``UnsafeArchiveError`` unless every member stays inside the empty ``staging`` folder (as ``tarfile``
    writes them there) and inside ``dest`` as it is on disk (as ``_merge`` moves them there)."""
    for root in (staging.resolve(), dest.resolve()):
        tree = _Tree(root)
        for member in members:
            reason = _place(tree, member)
            if reason:
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} {reason}")


def _place(tree: _Tree, member: _Member) -> str | None:
    """Record ``member`` in ``tree``; return why it may not be extracted there instead, or ``None``."""
    parts = _parts(member.name)
    folder = tree.resolve(parts[:-1])
    if folder is None:
        return "passes through a link that leads outside the extraction folder"
    path = (*folder, parts[-1])
    found, _ = tree.entry(path)
    if member.kind == "dir":  # _merge merges into an existing folder, following a link to one
        path = tree.resolve(parts)
        if path is None:
            return "is a folder whose name is a link that leads outside the extraction folder"
        there, _ = tree.entry(path)
        if there == "file" or (there == "missing" and found == "symlink"):
            return "is a folder where the destination has a file or a dangling link"
        tree.placed[path] = ("dir", "")
        return None
    if found == "dir":
        return f"is a {member.kind} where the destination has a folder"
    if member.kind == "symlink" and tree.resolve(_parts(member.target), base=folder) is None:
        return f"is a symlink to {member.target!r}, which resolves outside the extraction folder"
    if member.kind == "hardlink" and tree.resolve(_parts(member.target)) is None:  # os.link follows symlinks
        return f"is a hardlink to {member.target!r}, which resolves outside the extraction folder"
    tree.placed[path] = ("symlink", member.target) if member.kind == "symlink" else ("file", "")
    return None


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``dest`` (so moving out of it is a rename), removed on exit."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.extract-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into(archive: Path, tmp: Path, dest: Path, members: list[_Member]) -> list[Path]:
    """Merge the staged ``tmp`` into ``dest``; the paths of the non-folder members there, in archive order."""
    dest.mkdir(parents=True, exist_ok=True)
    tree = _Tree(dest.resolve())
    for entry in sorted(tmp.iterdir()):
        _merge(archive, entry, (entry.name,), tree)
    return [dest / posixpath.normpath(m.name) for m in members if m.kind != "dir"]


def _merge(archive: Path, src: Path, path: tuple[str, ...], tree: _Tree) -> None:
    """Rename ``src`` onto ``path`` of ``tree``; a folder onto an existing folder merges entry by entry (files and
    links replaced, never written through). Links in the destination are followed only inside ``tree.root``
    (``_check_paths`` refused the rest; this re-check guards against the folder changing since)."""
    is_dir = stat.S_ISDIR(src.lstat().st_mode)
    folder = tree.resolve(list(path[:-1]))
    into = tree.resolve(list(path)) if is_dir else path
    if folder is None or into is None:
        raise UnsafeArchiveError(f"{archive}: member path {'/'.join(path)!r} passes through a link that now leads "
                                 f"outside {tree.root}")
    if is_dir and tree.entry(into)[0] == "dir":
        for entry in sorted(src.iterdir()):
            _merge(archive, entry, (*into, entry.name), tree)
        src.rmdir()
    else:
        os.replace(src, tree.root.joinpath(*folder, path[-1]))
