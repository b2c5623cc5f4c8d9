"""Tests of :func:`flmrun._fetch.download` (and its callers) against bad sources.

Everything is real: FIFOs and devices on disk, stdlib HTTP servers on 127.0.0.1 that
misbehave on purpose (trickling bytes, closing early, lying sizes), the testkit's Flight
object cache.  A download that could hang runs in a thread joined with a timeout, and
whatever would keep it blocked is released in the test's cleanup.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import socketserver
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flmrun._errors import InstallError, UnsafeArchiveError
from flmrun._fetch import (
    DEFAULT_DOWNLOAD_LIMIT,
    DEFAULT_DOWNLOAD_TIMEOUT,
    DOWNLOAD_LIMIT_ENV,
    DOWNLOAD_TIMEOUT_ENV,
    download,
    download_limit,
    download_timeout,
)

JOIN_TIMEOUT = 15.0
"""How long a test waits for a download that must end by itself."""
TRICKLE_INTERVAL = 0.25
"""Seconds between two bytes of a trickling server."""
TRICKLE_DEADLINE = 2.0
"""The download deadline configured for the trickle tests."""


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(autouse=True)
def _defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DOWNLOAD_LIMIT_ENV, raising=False)
    monkeypatch.delenv(DOWNLOAD_TIMEOUT_ENV, raising=False)


class _Outcome:
    """What a download run in a thread ended with."""

    def __init__(self) -> None:
        self.digest: str | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0


def run_bounded(fn: Callable[[], str], release: Callable[[], None]) -> _Outcome:
    """Run ``fn`` in a thread; it must end within JOIN_TIMEOUT.  If it does not,
    ``release`` unblocks it (so the thread ends) and the test fails."""
    outcome = _Outcome()

    def target() -> None:
        start = time.monotonic()
        try:
            outcome.digest = fn()
        except BaseException as exc:
            outcome.error = exc
        outcome.seconds = time.monotonic() - start

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(JOIN_TIMEOUT)
    hung = thread.is_alive()
    if hung:
        release()
        thread.join(JOIN_TIMEOUT)
    assert not hung, f"the download was still blocked after {JOIN_TIMEOUT} s"
    return outcome


# --------------------------------------------------------------------------- file://


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pkg.tar.gz"
    os.mkfifo(fifo)
    dest = tmp_path / "dl" / "pkg.tar.gz"

    def release() -> None:  # a writer that closes at once: a blocked reader sees EOF
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    outcome = run_bounded(lambda: download("demo", fifo.as_uri(), dest), release)
    assert isinstance(outcome.error, InstallError), outcome.error
    message = str(outcome.error)
    assert "a FIFO, not a regular file" in message
    assert fifo.as_uri() in message
    assert not dest.exists()


@pytest.mark.parametrize(
    ("path", "kind"), [("/dev/zero", "a character device"), ("/", "a directory")]
)
def test_non_regular_files_are_refused(tmp_path: Path, path: str, kind: str) -> None:
    dest = tmp_path / "dl" / "pkg.tar.gz"
    with pytest.raises(InstallError, match=f"{kind}, not a regular file") as info:
        download("demo", f"file://{path}", dest, max_bytes=1024**2)  # cap: never fill the disk
    assert f"file://{path}" in str(info.value)
    assert not dest.exists()


def test_file_over_the_configured_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "pkg.tar.gz"
    package.write_bytes(os.urandom(4096))
    monkeypatch.setenv(DOWNLOAD_LIMIT_ENV, "1000")
    dest = tmp_path / "dl" / "pkg.tar.gz"
    with pytest.raises(InstallError) as info:
        download("demo", package.as_uri(), dest)
    message = str(info.value)
    assert "larger than the download limit of 1000 bytes" in message
    assert "it declares 4096 bytes" in message
    assert package.as_uri() in message and DOWNLOAD_LIMIT_ENV in message
    assert not dest.exists()
    monkeypatch.setenv(DOWNLOAD_LIMIT_ENV, "4096")  # exactly at the cap is fine
    assert download("demo", package.as_uri(), dest)
    assert dest.read_bytes() == package.read_bytes()


# --------------------------------------------------------------------------- settings


def test_defaults() -> None:
    from flamepy.runner._package import DEFAULT_SIZE_BUDGET

    assert download_limit() == DEFAULT_DOWNLOAD_LIMIT == DEFAULT_SIZE_BUDGET
    assert download_timeout() == DEFAULT_DOWNLOAD_TIMEOUT


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        (DOWNLOAD_LIMIT_ENV, "lots"),
        (DOWNLOAD_LIMIT_ENV, "0"),
        (DOWNLOAD_LIMIT_ENV, "-5"),
        (DOWNLOAD_LIMIT_ENV, "1.5"),
        (DOWNLOAD_TIMEOUT_ENV, "soon"),
        (DOWNLOAD_TIMEOUT_ENV, "0"),
        (DOWNLOAD_TIMEOUT_ENV, "inf"),
        (DOWNLOAD_TIMEOUT_ENV, "nan"),
    ],
)
def test_bad_settings_are_install_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    package = make_tar(tmp_path / "pkg.tar.gz", {"a.txt": b"a"})
    monkeypatch.setenv(variable, value)
    with pytest.raises(InstallError, match=f"{variable}={value!r} is not a positive"):
        download("demo", package.as_uri(), tmp_path / "dl" / "pkg.tar.gz")


# --------------------------------------------------------------------------- http(s)://


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """``/trickle-body``, ``/trickle-headers``, ``/truncated``, ``/oversize``, else ok
    (each with an optional ``.tar.gz``)."""

    stop: threading.Event
    payload = os.urandom(1000)

    def do_GET(self) -> None:
        path = self.path.removesuffix(".tar.gz")
        if path == "/trickle-headers":
            self._trickle(b"HTTP/1.0 200 OK\r\nX-Padding: " + b"p" * 10_000)
            return
        self.send_response(200)
        if path == "/trickle-body":
            self.send_header("Content-Length", "10000")
            self.end_headers()
            self._trickle(b"x" * 10_000)
        elif path == "/truncated":
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload[:400])
            self.close_connection = True
        elif path == "/oversize":
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(os.urandom(5000))
        else:
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload)

    def _trickle(self, data: bytes) -> None:
        self.wfile.flush()
        for i in range(len(data)):
            if self.stop.wait(TRICKLE_INTERVAL):
                return
            try:
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, threading.Event]]:
    """A misbehaving HTTP server on 127.0.0.1: (base URL, event that stops trickles)."""
    stop = threading.Event()
    handler = type("Handler", (_Misbehaving,), {"stop": stop})
    srv = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", stop
    finally:
        stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(JOIN_TIMEOUT)


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-headers"])
def test_trickling_server_hits_the_total_deadline(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: tuple[str, threading.Event],
    path: str,
) -> None:
    base, stop = server
    url = f"{base}{path}.tar.gz"
    monkeypatch.setenv(DOWNLOAD_TIMEOUT_ENV, str(TRICKLE_DEADLINE))
    dest = tmp_path / "dl" / "pkg.tar.gz"
    outcome = run_bounded(lambda: download("demo", url, dest), stop.set)
    assert isinstance(outcome.error, InstallError), outcome.error
    message = str(outcome.error)
    assert f"downloading {url} did not finish within {TRICKLE_DEADLINE:g} s" in message
    assert DOWNLOAD_TIMEOUT_ENV in message
    assert TRICKLE_DEADLINE <= outcome.seconds < TRICKLE_DEADLINE + 3
    assert not dest.exists()


def test_truncated_body_is_reported_as_such(
    tmp_path: Path, server: tuple[str, threading.Event]
) -> None:
    base, _ = server
    url = f"{base}/truncated.tar.gz"
    with pytest.raises(InstallError) as info:
        download("demo", url, tmp_path / "dl" / "pkg.tar.gz")
    assert f"truncated download: got 400 of 1000 bytes from {url}" in str(info.value)
    assert not (tmp_path / "dl" / "pkg.tar.gz").exists()


def test_declared_size_over_the_cap_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: tuple[str, threading.Event]
) -> None:
    base, _ = server
    url = f"{base}/oversize.tar.gz"
    monkeypatch.setenv(DOWNLOAD_LIMIT_ENV, "1000")
    with pytest.raises(InstallError) as info:
        download("demo", url, tmp_path / "dl" / "pkg.tar.gz")
    message = str(info.value)
    assert f"the package at {url} is larger than the download limit of 1000 bytes" in message
    assert "it declares 5000 bytes" in message


def test_good_http_download_still_works(
    tmp_path: Path, server: tuple[str, threading.Event]
) -> None:
    import hashlib

    base, _ = server
    dest = tmp_path / "dl" / "pkg.tar.gz"
    digest = download("demo", f"{base}/ok.tar.gz", dest, timeout=TRICKLE_DEADLINE)
    assert dest.read_bytes() == _Misbehaving.payload
    assert digest == hashlib.sha256(_Misbehaving.payload).hexdigest()


# --------------------------------------------------------------------------- callers


def test_refused_package_names_the_url_not_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flmrun._selfinstall import HOME_ENV, install_from_url

    evil = make_tar(tmp_path / "evil.tar.gz", {"../escape.py": b"x = 1\n"})
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    for name in ("FLAME_TOKEN", "FLAME_TOKEN_FILE", "FLAME_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UnsafeArchiveError) as info:
        install_from_url("demo", evil.as_uri())
    assert info.value.archive == evil.as_uri()
    assert info.value.member == "../escape.py"
    assert str(tmp_path / "home") not in str(info.value)  # no temporary download path
    assert not (tmp_path / "escape.py").exists()


# --------------------------------------------------------------------------- grpc://


def test_object_cache_download_respects_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.flight as flight

    module = pytest.importorskip("flame_testkit._cache_server")
    cache = module.CacheServer(port=0)
    cache.start()
    try:
        schema = pa.schema([("version", pa.uint64()), ("data", pa.binary())])
        client = flight.FlightClient(f"grpc://127.0.0.1:{cache.port}")
        try:
            descriptor = flight.FlightDescriptor.for_path("app/pkg/big.tar.gz")
            writer, reader = client.do_put(descriptor, schema)
            for _ in range(4):  # four batches of 64 KiB
                part = pa.array([os.urandom(64 * 1024)])
                writer.write_batch(pa.record_batch([pa.array([0], pa.uint64()), part], schema))
            writer.done_writing()
            reader.read()
            writer.close()
        finally:
            client.close()
        url = f"grpc://127.0.0.1:{cache.port}/app/pkg/big.tar.gz"
        monkeypatch.setenv(DOWNLOAD_LIMIT_ENV, str(100 * 1024))
        dest = tmp_path / "dl" / "big.tar.gz"
        with pytest.raises(InstallError, match="larger than the download limit of 102400"):
            download("demo", url, dest)
        assert not dest.exists()
        monkeypatch.setenv(DOWNLOAD_LIMIT_ENV, str(256 * 1024))
        download("demo", url, dest)
        assert dest.stat().st_size == 256 * 1024
    finally:
        cache.stop()
