"""The task stream: the Instance calls over a plain Unix socket, for a local executor.

A gRPC unary call over a Unix socket costs about 0.8 ms in Python on a small
machine, against well under 0.1 ms for a message each way on a plain socket.  So
an executor manager on the same host may offer flmrun a second socket for the
calls, by setting :data:`STREAM_ENV` to an absolute path.  flmrun then listens
there too, before its gRPC socket appears, so an executor that sees the gRPC
socket finds the stream socket already listening.  Flame's own executor manager
never sets the variable, and an instance that does not know it never creates the
socket: the executor then keeps to gRPC.  The flame.v1 Instance service is
served either way.

The messages are those of the Instance service, serialized as protobuf, in frames
of a 5-byte header (little-endian ``uint32`` payload length, one ``uint8``):

* the executor first sends :data:`HELLO`, and the instance answers the same bytes;
* a request's byte is the method (:data:`ENTER`, :data:`INVOKE`, :data:`LEAVE`) and
  its payload a ``SessionContext``, ``TaskContext`` or ``EmptyRequest``;
* a reply's byte is :data:`OK`, with the ``Result`` or ``TaskResult``, or
  :data:`ERROR`, with a UTF-8 message (a malformed frame); the instance then
  closes the connection.  A failing hook is not an ERROR: like over gRPC, it is a
  reply with ``return_code = -1``.

Each connection is served by its own thread, which runs plain hooks itself: a
task costs no hop between threads.  The calls run one at a time with those that
come over gRPC (:class:`~flmrun._servicer.InstanceCore` holds a lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable

from google.protobuf.message import DecodeError, Message

from flamepy.proto import shim_pb2, types_pb2
from flmrun._errors import InstanceConfigError
from flmrun._servicer import InstanceCore
from flmrun._unix import fits_socket_path, remove_own_socket, remove_stale_socket, socket_inode

__all__ = [
    "ENTER",
    "ERROR",
    "HEADER",
    "HELLO",
    "INVOKE",
    "LEAVE",
    "MAX_FRAME",
    "OK",
    "STREAM_ENV",
    "TaskStream",
]

logger = logging.getLogger("flmrun.stream")

STREAM_ENV = "FLMRUN_TASK_STREAM"
"""Set by a local executor manager: the absolute path of the task stream socket."""
HELLO = b"FLTS\x01"
"""The first bytes each way: the protocol and its version."""
HEADER = struct.Struct("<IB")
ENTER, INVOKE, LEAVE = 1, 2, 3
OK, ERROR = 0, 1
MAX_FRAME = 64 * 1024 * 1024
"""The largest payload accepted (Flame's own limit on a task input is 4 MiB)."""
_SMALL = 64 * 1024
"""Below this, a reply's header and payload go out in one write."""


class _Malformed(Exception):
    """The peer sent something this protocol does not allow."""


def recv_exactly(conn: socket.socket, n: int) -> bytes | None:
    """``n`` bytes from ``conn``; None if it closed before the first byte."""
    data = conn.recv(n)
    if len(data) == n:
        return data
    if not data:
        return None
    buf = bytearray(data)
    while len(buf) < n:
        more = conn.recv(n - len(buf))
        if not more:
            raise _Malformed(f"the connection closed {len(buf)} bytes into a {n}-byte frame")
        buf += more
    return bytes(buf)


class FrameReader:
    """Reads a connection in chunks: a small frame's header and payload usually
    arrive together, and cost one ``recv`` instead of two."""

    CHUNK = 64 * 1024

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buf = bytearray()

    def read(self, n: int) -> bytes | None:
        """``n`` bytes; None if the connection closed before the first byte."""
        buf = self._buf
        if not buf and n > self.CHUNK:
            return recv_exactly(self._conn, n)  # a big payload: straight, no copy
        while len(buf) < n:
            more = self._conn.recv(max(self.CHUNK, n - len(buf)))
            if not more:
                if not buf:
                    return None
                raise _Malformed(f"the connection closed {len(buf)} bytes into a {n}-byte frame")
            buf += more
        data = bytes(buf[:n])
        del buf[:n]
        return data


def send_frame(conn: socket.socket, kind: int, payload: bytes) -> None:
    header = HEADER.pack(len(payload), kind)
    if len(payload) < _SMALL:
        conn.sendall(header + payload)
    else:
        conn.sendall(header)
        conn.sendall(payload)


def check_stream_path(path: str) -> str:
    """``path`` if a task stream can listen there, else :class:`InstanceConfigError`."""
    if not os.path.isabs(path) or not fits_socket_path(path):
        raise InstanceConfigError(
            f"environment variable {STREAM_ENV} is {path!r}: it must be an absolute path "
            "short enough for a Unix socket (or unset)"
        )
    return path


class TaskStream:
    """Listens on ``path`` and serves each connection in its own daemon thread."""

    def __init__(self, path: str, core: InstanceCore) -> None:
        self.path = check_stream_path(path)
        self._core = core
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        remove_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(8)
        except OSError as exc:
            listener.close()
            raise InstanceConfigError(
                f"cannot bind the task stream socket {path!r}: {exc}"
            ) from exc
        self._listener = listener
        self._inode = socket_inode(path)
        self._methods: dict[int, tuple[type[Message], Callable[[Message], Message]]] = {
            ENTER: (shim_pb2.SessionContext, core.enter),  # type: ignore[dict-item]
            INVOKE: (shim_pb2.TaskContext, core.invoke),  # type: ignore[dict-item]
            LEAVE: (types_pb2.EmptyRequest, lambda _request: core.leave()),
        }
        threading.Thread(target=self._accept, name="flmrun-stream", daemon=True).start()
        logger.info("serving the task stream on %s", path)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="flmrun-tasks", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = FrameReader(conn)
        try:
            if reader.read(len(HELLO)) != HELLO:
                raise _Malformed("the connection did not start with the task stream's hello")
            conn.sendall(HELLO)
            while True:
                header = reader.read(HEADER.size)
                if header is None:
                    return  # the executor closed the stream
                size, method = HEADER.unpack(header)
                if size > MAX_FRAME:
                    raise _Malformed(f"a frame of {size} bytes is over the {MAX_FRAME} limit")
                payload = reader.read(size) if size else b""
                if payload is None:
                    raise _Malformed("the connection closed after a frame header")
                entry = self._methods.get(method)
                if entry is None:
                    raise _Malformed(f"unknown method {method}")
                kind, call = entry
                try:
                    request = kind.FromString(payload)
                except DecodeError as exc:
                    raise _Malformed(f"a {kind.__name__} that does not parse: {exc}") from exc
                send_frame(conn, OK, call(request).SerializeToString())
        except _Malformed as exc:
            logger.warning("closing a task stream connection: %s", exc)
            with contextlib.suppress(OSError):
                send_frame(conn, ERROR, str(exc).encode())
        except OSError as exc:
            if not self._closed:
                logger.info("task stream connection failed: %s", exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        """Stop listening, end every connection and remove the socket file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
        for sock in (self._listener, *conns):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
        self._listener.close()
        remove_own_socket(self.path, self._inode)
