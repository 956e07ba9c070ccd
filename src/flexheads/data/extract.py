"""Unpacking archives that cannot escape their folder, and unpacking each archive once.

* ``safe_extract`` refuses, before writing anything, any member that would land outside the destination
  (absolute paths, ``..``, links out, device files), judged against the destination as it is on disk, links that
  earlier archives left there included; it extracts into a temporary folder beside the destination, moving the
  result into place only when every member is out.
* ``extract_once`` unpacks an archive into a folder and leaves a marker ``<archive>.extracted.json`` recording
  where the archive came from, so a rerun with the same record skips the archive (and its download) entirely.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flexheads.errors import DataError
from flexheads.io import read_json_object, write_json

__all__ = ["UnsafeArchiveError", "extract_once", "safe_extract"]

_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit: a chain longer than this is a loop


class UnsafeArchiveError(DataError):
    """An archive member would be written outside the extraction folder (or is a device file)."""


def extract_once(
    root: Path,
    name: str,
    record: Mapping[str, Any],
    fetch: Callable[[], Path],
    *,
    members: Iterable[str] | None = None,
    check: Callable[[], object] | None = None,
    progress: bool = True,
) -> None:
    """Unpack the archive ``name`` into ``root`` unless its marker ``root/<name>.extracted.json`` already holds
    every key of ``record`` with the same value.

    Otherwise ``fetch()`` returns the archive's path (it downloads or verifies it: with a matching marker it is
    never called, so the archive is neither fetched nor hashed again), the archive is unpacked with
    ``safe_extract`` (``members`` as there), ``check()`` may raise on bad content, and only then is the marker
    written: ``record`` plus ``files``, the number of files extracted.  A killed run leaves no marker, so the next
    one unpacks again.
    """
    marker = root / f"{name}.extracted.json"
    data = read_json_object(marker)
    if all(key in data and data[key] == value for key, value in record.items()):
        return
    extracted = safe_extract(fetch(), root, members=members, progress=progress)
    if check is not None:
        check()
    write_json(marker, {**record, "files": len(extracted)})


# --- safe extraction ------------------------------------------------------------------------------------------


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
