"""Fetching application packages: download by URL, extract once per content digest.

Shared by the testkit's executor manager (which installs before launch, as Flame's
does) and by flmrun itself (which installs when no one did).  URL schemes:
``file://``, ``http(s)://`` and ``grpc(s)://host[:port]/<cache key>`` (a Flight DoGet
with ticket ``<key>:0``, flame-cache.md §9); a local cluster's cache on a Unix socket
is ``grpc+unix://<percent-encoded socket path>/<cache key>``.  Everything here blocks; callers on an
event loop run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from flmrun._archive import safe_extract
from flmrun._errors import InstallError

__all__ = ["CACHE_DEFAULT_PORT", "HTTP_TIMEOUT", "download", "extract_once", "file_name", "flocked"]

HTTP_TIMEOUT = 300.0
"""Seconds an http(s) download may block on the network (flame-config.md §4.2)."""
CACHE_TIMEOUT = 300.0
CACHE_DEFAULT_PORT = 9090
_CHUNK = 1024 * 1024


def extract_once(archive: Path, root: Path, digest: str) -> Path:
    """Extract ``archive`` into ``<root>/<digest>/src`` unless that exists already."""
    home = root / digest
    src = home / "src"
    if src.is_dir():
        return src
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with flocked(home / ".lock"):
        if not src.is_dir():
            safe_extract(archive, src)
    return src


def download(
    app_name: str,
    url: str,
    dest: Path,
    *,
    cache_ca_file: str | None = None,
    cache_token: str | None = None,
) -> str:
    """Stream ``url`` into ``dest`` and return the SHA-256 hex of its bytes.

    ``cache_token`` is the access token of a local cluster's cache (sent with the
    DoGet of a ``grpc*://`` URL)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            sink = _HashingWriter(out)
            if scheme == "file":
                _fetch_file(app_name, url, parts, sink)
            elif scheme in ("http", "https"):
                _fetch_http(app_name, url, sink)
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


def _fetch_cache(
    app_name: str,
    url: str,
    parts: urllib.parse.SplitResult,
    sink: _HashingWriter,
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
    sink: _HashingWriter,
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
            options = flight.FlightCallOptions(timeout=CACHE_TIMEOUT)
            reader = client.do_get(flight.Ticket(f"{key}:0".encode()), options)
            for chunk in reader:
                rows += _write_batch(chunk.data, sink, app_name, url)
        finally:
            client.close()
    except pa.ArrowException as exc:
        raise InstallError(
            f"application {app_name}: downloading {key!r} from the object cache at "
            f"{location} failed: {exc}"
        ) from exc
    if rows == 0:
        raise InstallError(
            f"application {app_name}: the object cache returned no data for {key!r} ({url})"
        )


class _HashingWriter:
    """Writes to a file while hashing what passes through."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.sha.update(data)
        self.out.write(data)


def _write_batch(batch: object, sink: _HashingWriter, app_name: str, url: str) -> int:
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


def _fetch_file(
    app_name: str, url: str, parts: urllib.parse.SplitResult, sink: _HashingWriter
) -> None:
    if parts.netloc not in ("", "localhost"):
        raise InstallError(
            f"application {app_name}: file:// URL {url!r} names a remote host; "
            "only local paths are supported"
        )
    path = Path(urllib.parse.unquote(parts.path))
    try:
        src = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as exc:
        raise InstallError(
            f"application {app_name}: package file {path} does not exist (url {url})"
        ) from exc
    except OSError as exc:
        raise InstallError(
            f"application {app_name}: cannot read package file {path}: {exc}"
        ) from exc
    with src:
        while chunk := src.read(_CHUNK):
            sink.write(chunk)


def _fetch_http(app_name: str, url: str, sink: _HashingWriter) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "flame-testkit-installer"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            while chunk := response.read(_CHUNK):
                sink.write(chunk)
    except urllib.error.HTTPError as exc:
        raise InstallError(
            f"application {app_name}: downloading {url} failed: HTTP {exc.code} {exc.reason}"
        ) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InstallError(f"application {app_name}: downloading {url} failed: {exc}") from exc


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
