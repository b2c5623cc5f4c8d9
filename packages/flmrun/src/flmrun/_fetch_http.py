"""The http(s) transfer of :func:`flmrun._fetch.download`, bounded by a total deadline.

A socket timeout bounds one operation, not a download: a server that sends a byte every
few seconds never trips it.  Here a watchdog timer shuts down the connection's socket
when the download's deadline passes, which wakes any read blocked on it (headers or
body, plain or TLS); the download then fails as timed out.  Each connect (and TLS
handshake) is additionally bounded by the time left.

A body shorter than its ``Content-Length`` (http.client returns it without complaint)
or a chunked body cut short is reported as a truncated download.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from flmrun._errors import InstallError

if TYPE_CHECKING:
    from flmrun._fetch import _Sink

__all__ = ["HTTP_TIMEOUT", "USER_AGENT", "fetch_http"]

HTTP_TIMEOUT = 300.0
"""Seconds one network operation (a connect, a read) may block; the whole download is
bounded by its deadline as well (``FLMRUN_DOWNLOAD_TIMEOUT``)."""
USER_AGENT = "flame-testkit-installer"
_CHUNK = 1024 * 1024
_MIN_TIMEOUT = 0.001


def fetch_http(app_name: str, url: str, sink: _Sink) -> None:
    """GET ``url`` into ``sink``: InstallError on any failure, naming ``url``."""
    watchdog = _Watchdog()
    opener = urllib.request.build_opener(_HTTPHandler(watchdog), _HTTPSHandler(watchdog))
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    timer = threading.Timer(max(sink.remaining(), 0.0), watchdog.expire)
    timer.daemon = True
    timer.start()
    try:
        with opener.open(request, timeout=min(HTTP_TIMEOUT, _left(sink))) as response:
            expected = _content_length(response)
            if expected is not None:
                sink.check_declared(expected)
            while chunk := response.read(_CHUNK):
                sink.write(chunk)
            if watchdog.expired:
                raise sink.timed_out()
            if expected is not None and sink.count < expected:
                raise sink.truncated(expected)
    except InstallError:
        raise
    except urllib.error.HTTPError as exc:
        raise InstallError(
            f"application {app_name}: downloading {url} failed: HTTP {exc.code} {exc.reason}"
        ) from exc
    except http.client.IncompleteRead as exc:
        if watchdog.expired:
            raise sink.timed_out() from exc
        raise sink.truncated(None) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if watchdog.expired:
            raise sink.timed_out() from exc
        raise InstallError(f"application {app_name}: downloading {url} failed: {exc}") from exc
    finally:
        timer.cancel()
        timer.join()


def _left(sink: _Sink) -> float:
    return max(sink.remaining(), _MIN_TIMEOUT)


def _content_length(response: Any) -> int | None:
    raw = response.headers.get("Content-Length")
    if raw is None or response.headers.get("Transfer-Encoding"):
        return None
    try:
        length = int(raw)
    except ValueError:
        return None
    return length if length >= 0 else None


class _Watchdog:
    """Shuts down every socket it tracks once :meth:`expire` is called (by a timer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for an SSLSocket (whose own shutdown drops its
    # SSL state under a reader): the reader sees end of file.  A socket closed
    # meanwhile has no descriptor any more, so this can never hit a reused one.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, watchdog: _Watchdog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    def connect(self) -> None:
        super().connect()
        self._watchdog.track(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, watchdog: _Watchdog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    def connect(self) -> None:
        super().connect()  # the TLS handshake runs within the socket's timeout
        self._watchdog.track(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
            return _WatchedHTTPConnection(*args, watchdog=self._watchdog, **kwargs)

        return self.do_open(connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(*args: Any, **kwargs: Any) -> http.client.HTTPSConnection:
            return _WatchedHTTPSConnection(*args, watchdog=self._watchdog, **kwargs)

        # The default context, as urlopen uses (HTTPSHandler keeps it in _context).
        context = getattr(self, "_context", None)
        return self.do_open(connection, req, context=context)
