"""Fetching application packages: download by URL, extract once per content digest.

Shared by the testkit's executor manager (which installs before launch, as Flame's
does) and by flmrun itself (which installs when no one did).  URL schemes:
``file://``, ``http(s)://`` and ``grpc(s)://host[:port]/<cache key>`` (a Flight DoGet
with ticket ``<key>:0``, flame-cache.md §9); a local cluster's cache on a Unix socket
is ``grpc+unix://<percent-encoded socket path>/<cache key>``.  Everything here blocks; callers on an
event loop run it in a worker thread.

Every download is bounded, whatever the scheme:

* **Size.** At most ``FLMRUN_DOWNLOAD_LIMIT`` bytes (a positive integer; default
  :data:`DEFAULT_DOWNLOAD_LIMIT`, 256 MiB: the Runner's package size budget,
  :data:`flamepy.runner._package.DEFAULT_SIZE_BUDGET`, which a compressed package
  never exceeds).  A declared size over the cap is refused before any byte is read.
* **Time.** The whole download, all reads together, must finish within
  ``FLMRUN_DOWNLOAD_TIMEOUT`` seconds (a positive number; default
  :data:`DEFAULT_DOWNLOAD_TIMEOUT`, flame-config.md §4.2's 300 s), so a server that
  trickles bytes cannot hold an install (and the cluster's shutdown) forever.
* **Kind.** A ``file://`` URL must name a regular file: devices (``/dev/zero``), FIFOs,
  sockets and directories are refused, and a FIFO is never waited on.
* **Completeness.** An http(s) body shorter than its ``Content-Length`` is reported as a
  truncated download, not left for the extractor to call a corrupt archive.

Errors are :class:`~flmrun._errors.InstallError` and name the URL the user gave;
:func:`extract_once` is given that URL too, so a refused archive names it rather than
the temporary file it was downloaded to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import stat
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from flamepy.runner._package import DEFAULT_SIZE_BUDGET
from flmrun._archive import safe_extract
from flmrun._errors import InstallError
from flmrun._fetch_http import HTTP_TIMEOUT, fetch_http

__all__ = [
    "CACHE_DEFAULT_PORT",
    "DEFAULT_DOWNLOAD_LIMIT",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DOWNLOAD_LIMIT_ENV",
    "DOWNLOAD_TIMEOUT_ENV",
    "HTTP_TIMEOUT",
    "download",
    "download_limit",
    "download_timeout",
    "extract_once",
    "file_name",
    "flocked",
]

DOWNLOAD_LIMIT_ENV = "FLMRUN_DOWNLOAD_LIMIT"
"""Environment variable: the most bytes one package download may hold."""
DOWNLOAD_TIMEOUT_ENV = "FLMRUN_DOWNLOAD_TIMEOUT"
"""Environment variable: the seconds one whole package download may take."""
DEFAULT_DOWNLOAD_LIMIT = DEFAULT_SIZE_BUDGET
"""256 MiB: the Runner refuses to build a package of more (uncompressed) bytes than this."""
DEFAULT_DOWNLOAD_TIMEOUT = 300.0
"""Seconds a whole download may take, all reads together (flame-config.md §4.2)."""
CACHE_DEFAULT_PORT = 9090
_CHUNK = 1024 * 1024


def download_limit() -> int:
    """The download size cap in bytes: ``$FLMRUN_DOWNLOAD_LIMIT`` or the default."""
    raw = os.environ.get(DOWNLOAD_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_DOWNLOAD_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise InstallError(
            f"{DOWNLOAD_LIMIT_ENV}={raw!r} is not a positive whole number of bytes; "
            f"set it to one (e.g. {DEFAULT_DOWNLOAD_LIMIT}) or unset it for the default"
        )
    return value


def download_timeout() -> float:
    """The per-download deadline in seconds: ``$FLMRUN_DOWNLOAD_TIMEOUT`` or the default."""
    raw = os.environ.get(DOWNLOAD_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise InstallError(
            f"{DOWNLOAD_TIMEOUT_ENV}={raw!r} is not a positive number of seconds; "
            f"set it to one (e.g. {DEFAULT_DOWNLOAD_TIMEOUT:g}) or unset it for the default"
        )
    return value


def extract_once(archive: Path, root: Path, digest: str, *, source: str | None = None) -> Path:
    """Extract ``archive`` into ``<root>/<digest>/src`` unless that exists already.

    ``source`` (the package URL) is what a refused archive's error names; the default
    is ``archive``'s path."""
    home = root / digest
    src = home / "src"
    if src.is_dir():
        return src
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with flocked(home / ".lock"):
        if not src.is_dir():
            safe_extract(archive, src, name=source)
    return src


def download(
    app_name: str,
    url: str,
    dest: Path,
    *,
    cache_ca_file: str | None = None,
    cache_token: str | None = None,
    max_bytes: int | None = None,
    timeout: float | None = None,
) -> str:
    """Stream ``url`` into ``dest`` and return the SHA-256 hex of its bytes.

    ``cache_token`` is the access token of a local cluster's cache (sent with the
    DoGet of a ``grpc*://`` URL).  ``max_bytes`` and ``timeout`` (seconds, for the
    whole download) default to :func:`download_limit` and :func:`download_timeout`."""
    limit = download_limit() if max_bytes is None else max_bytes
    seconds = download_timeout() if timeout is None else timeout
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            sink = _Sink(out, app_name, url, limit, seconds)
            if scheme == "file":
                _fetch_file(app_name, url, parts, sink)
            elif scheme in ("http", "https"):
                fetch_http(app_name, url, sink)
            elif scheme in ("grpc", "grpcs", "grpc+unix"):
                _fetch_cache(app_name, url, parts, sink, cache_ca_file, cache_token)
            else:
                raise InstallError(
                    f"application {app_name}: unsupported package URL scheme in {url!r}; "
                    "expected file://, http(s)://, grpc(s):// or grpc+unix://"
                )
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise
    return sink.sha.hexdigest()


class _Sink:
    """Writes a download to a file while hashing it, within its size cap and deadline."""

    def __init__(
        self, out: IO[bytes], app_name: str, url: str, max_bytes: int, timeout: float
    ) -> None:
        self.out = out
        self.app_name = app_name
        self.url = url
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.count = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.count += len(data)
        if self.count > self.max_bytes:
            raise self.too_large("the transfer went past it")
        if self.remaining() <= 0:
            raise self.timed_out()
        self.sha.update(data)
        self.out.write(data)

    def remaining(self) -> float:
        """Seconds left until the deadline (negative once it passed)."""
        return self.deadline - time.monotonic()

    def check_declared(self, size: int) -> None:
        """Refuse a download whose declared size is over the cap, before reading it."""
        if size > self.max_bytes:
            raise self.too_large(f"it declares {size} bytes")

    def too_large(self, detail: str) -> InstallError:
        return InstallError(
            f"application {self.app_name}: the package at {self.url} is larger than the "
            f"download limit of {self.max_bytes} bytes ({detail}); make the package "
            f"smaller, or raise the limit with {DOWNLOAD_LIMIT_ENV}"
        )

    def timed_out(self) -> InstallError:
        return InstallError(
            f"application {self.app_name}: downloading {self.url} did not finish within "
            f"{self.timeout:g} s (got {self.count} bytes); check the server, or raise the "
            f"deadline with {DOWNLOAD_TIMEOUT_ENV}"
        )

    def truncated(self, expected: int | None) -> InstallError:
        of = f" of {expected}" if expected is not None else ""
        return InstallError(
            f"application {self.app_name}: truncated download: got {self.count}{of} bytes "
            f"from {self.url}; the server closed the connection early, try again"
        )


def _fetch_cache(
    app_name: str,
    url: str,
    parts: urllib.parse.SplitResult,
    sink: _Sink,
    cache_ca_file: str | None,
    cache_token: str | None,
) -> None:
    key = urllib.parse.unquote(parts.path).lstrip("/")
    if parts.scheme.lower() == "grpc+unix":
        socket = urllib.parse.unquote(parts.netloc)
        if not socket.startswith("/") or not key:
            raise InstallError(
                f"application {app_name}: package URL {url!r} needs a socket path and a "
                "cache key (grpc+unix://<percent-encoded socket path>/<app>/pkg/<file>)"
            )
        _do_get(app_name, url, f"grpc+unix://{socket}", key, sink, None, cache_token)
        return
    try:
        host, port = parts.hostname, parts.port or CACHE_DEFAULT_PORT
    except ValueError as exc:
        raise InstallError(f"application {app_name}: bad package URL {url!r}: {exc}") from exc
    if not host or not key:
        raise InstallError(
            f"application {app_name}: package URL {url!r} needs a host and a cache key "
            "(grpc://host[:port]/<app>/pkg/<file>)"
        )
    host = f"[{host}]" if ":" in host else host
    tls = parts.scheme.lower() == "grpcs"
    location = f"{'grpc+tls' if tls else 'grpc+tcp'}://{host}:{port}"
    roots: bytes | None = None
    if tls and cache_ca_file:
        try:
            roots = Path(cache_ca_file).read_bytes()
        except OSError as exc:
            raise InstallError(f"cannot read the cache CA file {cache_ca_file}: {exc}") from exc
    _do_get(app_name, url, location, key, sink, roots, cache_token)


def _do_get(
    app_name: str,
    url: str,
    location: str,
    key: str,
    sink: _Sink,
    roots: bytes | None,
    token: str | None,
) -> None:
    import pyarrow as pa
    import pyarrow.flight as flight

    from flamepy._auth import flight_middleware

    rows = 0
    try:
        client = flight.FlightClient(
            location, tls_root_certs=roots, middleware=flight_middleware(token)
        )
        try:
            # A gRPC deadline: it bounds the whole stream, not each message.
            options = flight.FlightCallOptions(timeout=max(sink.remaining(), 0.001))
            reader = client.do_get(flight.Ticket(f"{key}:0".encode()), options)
            try:
                for chunk in reader:
                    rows += _write_batch(chunk.data, sink, app_name, url)
            except InstallError:
                reader.cancel()
                raise
        finally:
            client.close()
    except pa.ArrowException as exc:
        if sink.remaining() <= 0:
            raise sink.timed_out() from exc
        raise InstallError(
            f"application {app_name}: downloading {key!r} from the object cache at "
            f"{location} failed: {exc}"
        ) from exc
    if rows == 0:
        raise InstallError(
            f"application {app_name}: the object cache returned no data for {key!r} ({url})"
        )


def _write_batch(batch: object, sink: _Sink, app_name: str, url: str) -> int:
    """Append the ``data`` cells of one DoGet batch to ``sink``; return its row count."""
    import pyarrow as pa

    assert isinstance(batch, pa.RecordBatch)
    names = batch.schema.names
    if "data" not in names:
        raise InstallError(
            f"application {app_name}: the object cache reply for {url} has no 'data' column"
        )
    if "kind" in names and "patch" in batch.column("kind").to_pylist():
        raise InstallError(
            f"application {app_name}: the package object at {url} has patches; "
            "a package must be a single object"
        )
    for cell in batch.column("data"):
        buffer = cell.as_buffer()
        if buffer is not None:
            sink.write(memoryview(buffer))
    return int(batch.num_rows)


def _fetch_file(app_name: str, url: str, parts: urllib.parse.SplitResult, sink: _Sink) -> None:
    if parts.netloc not in ("", "localhost"):
        raise InstallError(
            f"application {app_name}: file:// URL {url!r} names a remote host; "
            "only local paths are supported"
        )
    path = Path(urllib.parse.unquote(parts.path))
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise InstallError(
            f"application {app_name}: package file {path} does not exist (url {url})"
        ) from exc
    except OSError as exc:
        raise InstallError(
            f"application {app_name}: cannot read package file {path} (url {url}): {exc.strerror}"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InstallError(
                f"application {app_name}: package file {path} (url {url}) is "
                f"{_kind(info.st_mode)}, not a regular file; point the URL at the "
                "package archive itself"
            )
        sink.check_declared(info.st_size)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as src:
        while chunk := src.read(_CHUNK):
            sink.write(chunk)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_IFDIR: "a directory",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
    }
    return kinds.get(stat.S_IFMT(mode), f"a file of type {stat.S_IFMT(mode):o}")


def file_name(url: str) -> str:
    """The last path segment of ``url``, made safe to use as a file name."""
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    name = name.replace("\\", "_").replace("\x00", "_")
    return name if name not in ("", ".", "..") else "package"


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
