"""The executor's task stream client against peers that do not speak the stream.

A real flmrun serving the stream is covered by test_executor.py; here the other
side is a bare socket that answers wrongly, or nothing listens: the client must
say so (None, so the executor keeps to gRPC) or fail the call with a typed error,
never hang.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flame_testkit._task_stream import TaskStreamClient, TaskStreamError
from flamepy.proto import shim_pb2
from flmrun._stream import HEADER, HELLO


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fts", dir="/tmp") as d:
        yield Path(d) / "x.tasks"


def _peer(path: Path, behave: Callable[[socket.socket], None]) -> threading.Thread:
    """A one-connection listener at ``path`` that runs ``behave`` on the connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def main() -> None:
        conn, _ = listener.accept()
        try:
            behave(conn)
        finally:
            conn.close()
            listener.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread


def test_nothing_listening_means_grpc(sock_path: Path) -> None:
    assert asyncio.run(TaskStreamClient.connect(sock_path)) is None


def test_another_protocol_means_grpc(sock_path: Path) -> None:
    def answer(conn: socket.socket) -> None:
        conn.recv(len(HELLO))
        conn.sendall(b"HTTP/")

    peer = _peer(sock_path, answer)
    assert asyncio.run(TaskStreamClient.connect(sock_path)) is None
    peer.join(5)


def test_a_peer_that_dies_mid_call_fails_the_call(sock_path: Path) -> None:
    def hello_then_hang_up(conn: socket.socket) -> None:
        conn.recv(len(HELLO))
        conn.sendall(HELLO)
        conn.recv(HEADER.size)  # the request's header, then the connection drops

    peer = _peer(sock_path, hello_then_hang_up)

    async def go() -> None:
        client = await TaskStreamClient.connect(sock_path)
        assert client is not None
        ctx = shim_pb2.TaskContext(task_id="1", session_id="s", input=b"x")
        # A close, or a reset (the peer left our payload unread): UNAVAILABLE either way.
        with pytest.raises(
            TaskStreamError, match=r"^UNAVAILABLE: the (instance|task stream)"
        ) as err:
            await client.invoke(ctx)
        assert err.value.code == "UNAVAILABLE"
        # Out of step now: later calls fail at once instead of reading a stray reply.
        with pytest.raises(TaskStreamError, match="did not finish"):
            await client.invoke(ctx)
        await client.close()

    asyncio.run(go())
    peer.join(5)


def test_an_error_frame_fails_the_call_with_its_text(sock_path: Path) -> None:
    def refuse(conn: socket.socket) -> None:
        conn.recv(len(HELLO))
        conn.sendall(HELLO)
        size, _ = HEADER.unpack(conn.recv(HEADER.size))
        conn.recv(size)
        text = b"unknown method 2"
        conn.sendall(HEADER.pack(len(text), 1) + text)

    peer = _peer(sock_path, refuse)

    async def go() -> None:
        client = await TaskStreamClient.connect(sock_path)
        assert client is not None
        ctx = shim_pb2.TaskContext(task_id="1", session_id="s")
        with pytest.raises(TaskStreamError, match="INTERNAL: unknown method 2"):
            await client.invoke(ctx)
        await client.close()

    asyncio.run(go())
    peer.join(5)
