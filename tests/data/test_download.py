"""Downloads against a local HTTP server (Range support written here), and archive extraction that cannot escape."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from flexheads.data.download import ChecksumError, DownloadError, download_file, file_digest
from flexheads.data.extract import UnsafeArchiveError, safe_extract

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10 KiB: several chunks at chunk_size=1024
FAST = {"chunk_size": 1024, "timeout": 5, "backoff": 0.0, "progress": False}


@contextmanager
def serve(
    files: Mapping[str, bytes], *, ignore_range: bool = False, fail_first: int = 0, truncate_first: bool = False,
    lifetime_s: float = 30.0, pause_s: float = 0.0,
) -> Iterator[SimpleNamespace]:
    """Serve ``files`` (URL path → bytes) on 127.0.0.1 until the block ends, or ``lifetime_s`` at the latest.

    ``requests`` records ``(path, Range header)`` per request. ``ignore_range`` answers 200 to Range requests;
    ``fail_first`` answers that many requests with 503; ``truncate_first`` sends half of the first body and hangs up;
    ``pause_s`` sends bodies 1 KiB at a time with that pause after each (a slow link).
    """
    state = SimpleNamespace(requests=[], fail=fail_first, truncate=truncate_first)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            if state.fail > 0:
                state.fail -= 1
                self.send_error(503)
                return
            status, start, end = 200, 0, len(body) - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if match and not ignore_range:
                start = int(match.group(1))
                end = min(int(match.group(2) or end), end)
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            chunk = body[start : end + 1]
            self.send_response(status)
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            self.end_headers()
            if state.truncate:
                state.truncate = False
                chunk = chunk[: len(chunk) // 2]
            for start in range(0, len(chunk), 1024):
                self.wfile.write(chunk[start : start + 1024])
                time.sleep(pause_s)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    watchdog = threading.Timer(lifetime_s, server.shutdown)
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}", requests=state.requests)
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- download -------------------------------------------------------------------------------------------------


def test_full_download_is_verified_and_not_repeated(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "file.bin"
    with serve({"/file.bin": PAYLOAD}) as server:
        url = f"{server.url}/file.bin"
        checks = {"sha256": _sha256(PAYLOAD), "md5": hashlib.md5(PAYLOAD).hexdigest(), "size": len(PAYLOAD)}
        assert download_file(url, dest, **checks, **FAST) == dest
        assert dest.read_bytes() == PAYLOAD and not dest.with_name("file.bin.part").exists()
        assert server.requests == [("/file.bin", None)]
        download_file(url, dest, **checks, **FAST)  # present with the right checksum: no request
        assert len(server.requests) == 1


def test_present_file_with_wrong_checksum_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale")
    with serve({"/file.bin": PAYLOAD}) as server:
        download_file(f"{server.url}/file.bin", dest, sha256=_sha256(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_partial_file_is_resumed_with_range(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    half = len(PAYLOAD) // 2
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:half])
    with serve({"/file.bin": PAYLOAD}) as server:
        download_file(f"{server.url}/file.bin", dest, sha256=_sha256(PAYLOAD), **FAST)
        assert server.requests == [("/file.bin", f"bytes={half}-")]
    assert dest.read_bytes() == PAYLOAD


def test_resumed_part_that_fails_the_checksum_is_downloaded_afresh(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"x" * 100)  # not a prefix of the file (e.g. it changed remotely)
    with serve({"/file.bin": PAYLOAD}) as server:
        download_file(f"{server.url}/file.bin", dest, sha256=_sha256(PAYLOAD), **FAST)
        assert server.requests == [("/file.bin", "bytes=100-"), ("/file.bin", None)]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:1000])
    with serve({"/file.bin": PAYLOAD}, ignore_range=True) as server:
        download_file(f"{server.url}/file.bin", dest, sha256=_sha256(PAYLOAD), **FAST)
        assert server.requests == [("/file.bin", "bytes=1000-")]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_answered_416_is_kept(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD)
    with serve({"/file.bin": PAYLOAD}) as server:
        download_file(f"{server.url}/file.bin", dest, sha256=_sha256(PAYLOAD), **FAST)  # no size: must ask
        assert server.requests == [("/file.bin", f"bytes={len(PAYLOAD)}-")]
    assert dest.read_bytes() == PAYLOAD


def test_dropped_connection_is_resumed(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    with serve({"/file.bin": PAYLOAD}, truncate_first=True) as server:
        download_file(f"{server.url}/file.bin", dest, size=len(PAYLOAD), sha256=_sha256(PAYLOAD), **FAST)
        assert server.requests == [("/file.bin", None), ("/file.bin", f"bytes={len(PAYLOAD) // 2}-")]
    assert dest.read_bytes() == PAYLOAD


def test_server_errors_are_retried(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    with serve({"/file.bin": PAYLOAD}, fail_first=2) as server:
        download_file(f"{server.url}/file.bin", dest, sha256=_sha256(PAYLOAD), retries=2, **FAST)
        assert len(server.requests) == 3
    assert dest.read_bytes() == PAYLOAD


def test_retries_exhausted_raise_download_error(tmp_path: Path) -> None:
    with serve({"/file.bin": PAYLOAD}, fail_first=10) as server:
        url = f"{server.url}/file.bin"
        with pytest.raises(DownloadError, match=re.escape(url)) as err:
            download_file(url, tmp_path / "file.bin", retries=2, **FAST)
        assert "3 attempts" in str(err.value) and len(server.requests) == 3


def test_not_found_fails_at_once_naming_the_url(tmp_path: Path) -> None:
    with serve({}) as server:
        url = f"{server.url}/missing.zip"
        with pytest.raises(DownloadError, match=re.escape(url) + ".*404"):
            download_file(url, tmp_path / "missing.zip", retries=3, **FAST)
        assert len(server.requests) == 1  # a 404 will not change: no retries
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_removes_everything(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    wrong = "0" * 64
    with serve({"/file.bin": PAYLOAD}) as server:
        with pytest.raises(ChecksumError) as err:
            download_file(f"{server.url}/file.bin", dest, sha256=wrong, **FAST)
    message = str(err.value)
    assert "file.bin" in message and wrong in message and _sha256(PAYLOAD) in message
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_is_a_checksum_error(tmp_path: Path) -> None:
    with serve({"/file.bin": PAYLOAD}) as server:
        with pytest.raises(ChecksumError, match=f"expected {len(PAYLOAD) + 1} bytes, got {len(PAYLOAD)}"):
            download_file(f"{server.url}/file.bin", tmp_path / "file.bin", size=len(PAYLOAD) + 1, **FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_killed_download_resumes_from_its_part_file(tmp_path: Path) -> None:
    payload = PAYLOAD * 8  # 80 KiB in 1 KiB pieces, 10 ms apart: the kill comes while it streams
    dest, part = tmp_path / "file.bin", tmp_path / "file.bin.part"
    with serve({"/file.bin": payload}, pause_s=0.01) as server:
        url = f"{server.url}/file.bin"
        script = "import sys; from flexheads.data.download import download_file; download_file(*sys.argv[1:], " \
                 "chunk_size=1024, progress=False)"
        process = subprocess.Popen([sys.executable, "-c", script, url, str(dest)])
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline and not (part.exists() and part.stat().st_size):
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kept = part.stat().st_size
        assert 0 < kept < len(payload) and not dest.exists()  # killed mid-stream: a part file, no dest
        download_file(url, dest, sha256=_sha256(payload), **FAST)
        assert server.requests[-1] == ("/file.bin", f"bytes={kept}-")
    assert dest.read_bytes() == payload and not part.exists()


def test_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(PAYLOAD)
    assert file_digest(path) == _sha256(PAYLOAD)
    assert file_digest(path, "md5") == hashlib.md5(PAYLOAD).hexdigest()


# --- extraction -----------------------------------------------------------------------------------------------


def _zip(path: Path, members: Mapping[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """``members``: (name, data, None) files (folders when the name ends in '/'), (name, None, target) symlinks,
    (name, None, '=target') hard links."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif target is None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.LNKTYPE if target.startswith("=") else tarfile.SYMTYPE
                info.linkname = target.removeprefix("=")
                tf.addfile(info)
    return path


def _no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.rglob("*") if ".extract-" in p.name]


@pytest.fixture(params=["data filter", "no data filter"])
def tar_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every extraction test runs twice: as this Python has it, and without ``tarfile``'s data filter (as on
    Python 3.10.0-3.10.11), so the checks are shown complete on their own."""
    if request.param == "no data filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def test_zip_extracts_and_merges_into_existing_folder(tmp_path: Path, tar_filter: str) -> None:
    archive = _zip(tmp_path / "a.zip", {"data/": b"", "data/one.txt": b"1", "data/sub/two.txt": b"2"})
    dest = tmp_path / "out"
    (dest / "data").mkdir(parents=True)
    (dest / "data" / "kept.txt").write_text("kept")
    files = safe_extract(archive, dest, progress=False)
    assert files == [dest / "data/one.txt", dest / "data/sub/two.txt"]
    assert [p.read_bytes() for p in files] == [b"1", b"2"] and (dest / "data/kept.txt").read_text() == "kept"
    assert _no_leftovers(tmp_path)


def test_tar_gz_extracts_with_inner_links_and_member_selection(tmp_path: Path, tar_filter: str) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [
        ("images/a.png", b"A", None), ("images/b.png", b"B", None), ("notes.txt", b"N", None),
        ("images/latest.png", None, "a.png"), ("images/copy.png", None, "=images/b.png"),
    ])  # fmt: skip
    dest = tmp_path / "out"
    files = safe_extract(archive, dest, progress=False)
    assert len(files) == 5 and (dest / "images/latest.png").read_bytes() == b"A"
    assert (dest / "images/latest.png").is_symlink() and (dest / "images/copy.png").read_bytes() == b"B"
    only = safe_extract(archive, tmp_path / "only", members=["images/b.png"], progress=False)
    assert only == [tmp_path / "only/images/b.png"] and not (tmp_path / "only/notes.txt").exists()
    with pytest.raises(ValueError, match="nope"):
        safe_extract(archive, tmp_path / "none", members=["nope"], progress=False)
    assert _no_leftovers(tmp_path)


@pytest.mark.parametrize(
    "kind, members, bad",
    [
        ("zip", {"ok.txt": b"ok", "../evil.txt": b"x"}, "../evil.txt"),
        ("zip", {"ok.txt": b"ok", "/tmp/flexheads-evil.txt": b"x"}, "/tmp/flexheads-evil.txt"),
        ("zip", {"ok.txt": b"ok", "..\\evil.txt": b"x"}, "..\\evil.txt"),
        ("tar", [("ok.txt", b"ok", None), ("passwd", None, "/etc/passwd")], "passwd"),
        ("tar", [("ok.txt", b"ok", None), ("sub/up", None, "../../evil")], "sub/up"),
        ("tar", [("ok.txt", b"ok", None), ("hard", None, "=../evil")], "hard"),
        ("tar", [("ok.txt", b"ok", None), ("a/b/link", None, ".."), ("a/b/link/x", b"x", None)], "a/b/link/x"),
        ("tar", [("ok.txt", b"ok", None), ("../evil.txt", b"x", None)], "../evil.txt"),
        ("tar", [("ok.txt", b"ok", None), ("/tmp/flexheads-evil.txt", b"x", None)], "/tmp/flexheads-evil.txt"),
    ],
)
def test_escaping_members_are_refused_before_writing(
    tmp_path: Path, tar_filter: str, kind: str, members, bad: str
) -> None:
    archive = _zip(tmp_path / "bad.zip", members) if kind == "zip" else _tar(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "work" / "out"
    with pytest.raises(UnsafeArchiveError, match=re.escape(archive.name) + ".*" + re.escape(repr(bad))):
        safe_extract(archive, dest, progress=False)
    assert not dest.exists() and not (tmp_path / "evil.txt").exists() and not (tmp_path / "work/evil.txt").exists()
    assert not Path("/tmp/flexheads-evil.txt").exists() and _no_leftovers(tmp_path)


def test_failed_extraction_leaves_no_half_folder(tmp_path: Path, tar_filter: str) -> None:
    archive = _zip(tmp_path / "a.zip", {"data/one.txt": b"first", "data/two.txt": b"second member"})
    raw = bytearray(archive.read_bytes())
    at = raw.index(b"second member")
    raw[at : at + 6] = b"SECOND"  # the CRC no longer matches: reading this member fails mid-extraction
    archive.write_bytes(bytes(raw))
    with pytest.raises(zipfile.BadZipFile):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "data").exists() and _no_leftovers(tmp_path)


def test_not_an_archive(tmp_path: Path, tar_filter: str) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"plain text")
    with pytest.raises(ValueError, match="not a zip or tar"):
        safe_extract(path, tmp_path / "out", progress=False)


def _refused(archive: Path, dest: Path, bad: str) -> None:
    """``safe_extract`` refuses ``archive`` in one line naming it and the member ``bad``, leaving no staging folder."""
    with pytest.raises(UnsafeArchiveError, match=re.escape(archive.name) + ".*" + re.escape(repr(bad))) as err:
        safe_extract(archive, dest, progress=False)
    assert "\n" not in str(err.value) and _no_leftovers(dest.parent)


def test_links_left_by_earlier_archives_cannot_be_chained_outside(tmp_path: Path, tar_filter: str) -> None:
    # a/x -> .. is the folder itself (fine on its own); d -> a/x/.. is then its parent: EVIL would land beside it.
    dest = tmp_path / "work" / "out"
    first = _tar(tmp_path / "1.tar.gz", [("a/keep", b"k", None), ("a/x", None, "..")])
    second = _tar(tmp_path / "2.tar.gz", [("d", None, "a/x/..")])
    third = _tar(tmp_path / "3.tar.gz", [("d/EVIL", b"x", None)])
    safe_extract(first, dest, progress=False)
    _refused(second, dest, "d")
    (dest / "d").symlink_to("a/x/..")  # as an older version of this code let the second archive do
    _refused(third, dest, "d/EVIL")
    assert not list(tmp_path.rglob("EVIL"))


def test_a_link_chain_inside_one_archive_cannot_lead_outside(tmp_path: Path, tar_filter: str) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [("a/keep", b"k", None), ("a/x", None, ".."), ("d", None, "a/x/..")])
    dest = tmp_path / "work" / "out"
    _refused(archive, dest, "d")
    assert not dest.exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("name", ["out/EVIL", "out/sub/EVIL", "out/"])
def test_an_existing_link_to_outside_is_not_written_through(
    tmp_path: Path, tar_filter: str, kind: str, name: str
) -> None:
    outside, dest = tmp_path / "outside", tmp_path / "work" / "out"
    outside.mkdir()
    dest.mkdir(parents=True)
    (dest / "out").symlink_to(outside)
    content = b"" if name.endswith("/") else b"x"
    archive = (_zip(tmp_path / "a.zip", {"ok.txt": b"ok", name: content}) if kind == "zip"
               else _tar(tmp_path / "a.tar.gz", [("ok.txt", b"ok", None), (name, content, None)]))
    _refused(archive, dest, name if kind == "zip" else name.rstrip("/"))  # tarfile drops a folder's trailing '/'
    assert list(outside.iterdir()) == [] and not (dest / "ok.txt").exists()


def test_merging_never_follows_a_link_to_outside(tmp_path: Path, tar_filter: str, monkeypatch) -> None:
    """The move into place re-checks links: a link swapped in after the checks is not written through either."""
    import flexheads.data.extract as extract

    outside, dest = tmp_path / "outside", tmp_path / "work" / "out"
    outside.mkdir()
    dest.mkdir(parents=True)
    (dest / "out").symlink_to(outside)
    monkeypatch.setattr(extract, "_check_paths", lambda *args: None)
    with pytest.raises(UnsafeArchiveError, match="a.tar.gz.*'out'"):
        safe_extract(_tar(tmp_path / "a.tar.gz", [("out/EVIL", b"x", None)]), dest, progress=False)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "members, bad",
    [
        ([("a/keep", b"k", None), ("a/x", None, ".."), ("h", None, "=a/x/../secret")], "h"),
        ([("h", None, "=out/secret")], "h"),  # through the link to outside already in dest
    ],
)
def test_a_hardlink_to_outside_is_refused(tmp_path: Path, tar_filter: str, members, bad: str) -> None:
    dest = tmp_path / "work" / "out"
    dest.mkdir(parents=True)
    (tmp_path / "work" / "secret").write_text("secret")
    (tmp_path / "secret").write_text("secret")
    (dest / "out").symlink_to(tmp_path)
    _refused(_tar(tmp_path / "a.tar.gz", members), dest, bad)
    assert sorted(p.name for p in dest.iterdir()) == ["out"]


def test_members_are_checked_against_the_staging_folder_too(tmp_path: Path, tar_filter: str) -> None:
    # In dest a -> b/c, so a/up -> .. is b and h's target is dest/secret; but tarfile writes into an empty staging
    # folder first, where a/up is the staging folder and h would hard-link the file beside it.
    dest = tmp_path / "work" / "out"
    (dest / "b" / "c").mkdir(parents=True)
    (dest / "a").symlink_to("b/c")
    (tmp_path / "work" / "secret").write_text("secret")
    archive = _tar(tmp_path / "a.tar.gz", [
        ("a/keep", b"k", None), ("a/up", None, ".."), ("h", None, "=a/up/../secret"),
    ])  # fmt: skip
    _refused(archive, dest, "h")
    assert not (dest / "h").exists() and not (dest / "b/c/keep").exists()


def test_links_that_stay_inside_still_extract(tmp_path: Path, tar_filter: str) -> None:
    dest = tmp_path / "out"
    first = _tar(tmp_path / "1.tar.gz", [
        ("v1/a.png", b"A", None), ("current", None, "v1"), ("a/x", None, ".."), ("h", None, "=a/x/v1/a.png"),
    ])  # fmt: skip
    second = _tar(tmp_path / "2.tar.gz", [("d", None, "a/x/v1"), ("v1/", None, None)])
    third = _zip(tmp_path / "3.zip", {"current/b.png": b"B", "d/c.png": b"C"})
    safe_extract(first, dest, progress=False)
    safe_extract(second, dest, progress=False)
    assert safe_extract(third, dest, progress=False) == [dest / "current/b.png", dest / "d/c.png"]
    assert (dest / "current").is_symlink() and (dest / "d").is_symlink()  # merged through, not replaced
    assert {p.name: p.read_bytes() for p in (dest / "v1").iterdir()} == {"a.png": b"A", "b.png": b"B", "c.png": b"C"}
    assert (dest / "h").read_bytes() == b"A" and _no_leftovers(tmp_path)
