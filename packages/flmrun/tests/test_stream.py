"""flmrun's task stream: the Instance calls over a plain Unix socket (``flmrun._stream``).

Each test starts a real instance with ``FLMRUN_TASK_STREAM`` set and speaks the
stream's wire with a small blocking client written from the protocol description,
beside gRPC on the same instance.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _instances import TESTAPP, WAIT, Instance, events

from flamepy.proto import shim_pb2, types_pb2

HEADER = struct.Struct("<IB")
HELLO = b"FLTS\x01"
ENTER, INVOKE, LEAVE = 1, 2, 3
OK, ERROR = 0, 1


class StreamClient:
    def __init__(self, path: Path, hello: bytes = HELLO) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))
        self.sock.sendall(hello)

    def handshake(self) -> bytes:
        return self._read(len(HELLO))

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            more = self.sock.recv(n - len(buf))
            if not more:
                raise EOFError(f"closed after {len(buf)} of {n} bytes")
            buf += more
        return buf

    def raw(self, method: int, payload: bytes) -> tuple[int, bytes]:
        self.sock.sendall(HEADER.pack(len(payload), method) + payload)
        size, status = HEADER.unpack(self._read(HEADER.size))
        return status, self._read(size)

    def invoke(self, data: bytes | None, task_id: str = "1") -> types_pb2.TaskResult:
        ctx = shim_pb2.TaskContext(task_id=task_id, session_id="s-1")
        if data is not None:
            ctx.input = data
        status, reply = self.raw(INVOKE, ctx.SerializeToString())
        assert status == OK, reply
        return types_pb2.TaskResult.FromString(reply)

    def enter(self) -> types_pb2.Result:
        ctx = shim_pb2.SessionContext(session_id="s-1")
        ctx.application.name = "app"
        status, reply = self.raw(ENTER, ctx.SerializeToString())
        assert status == OK, reply
        return types_pb2.Result.FromString(reply)

    def leave(self) -> types_pb2.Result:
        status, reply = self.raw(LEAVE, b"")
        assert status == OK, reply
        return types_pb2.Result.FromString(reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stream_path(workdir: Path) -> Path:
    return workdir / "x.tasks"


@pytest.fixture
def streamed(
    spawn: Callable[..., Instance], base_env: dict[str, str], stream_path: Path
) -> Callable[..., Instance]:
    def start(*args: str) -> Instance:
        return spawn(*args, env={**base_env, "FLMRUN_TASK_STREAM": str(stream_path)})

    return start


@pytest.fixture
def clients() -> Iterator[list[StreamClient]]:
    made: list[StreamClient] = []
    yield made
    for client in made:
        client.close()


def _connect(path: Path, clients: list[StreamClient], hello: bytes = HELLO) -> StreamClient:
    client = StreamClient(path, hello)
    clients.append(client)
    return client


def test_tasks_over_the_stream_beside_grpc(
    streamed: Callable[..., Instance],
    stream_path: Path,
    workdir: Path,
    clients: list[StreamClient],
) -> None:
    inst = streamed("-m", "flmrun", "--service", "flmtestsvc:Recorder")
    inst.wait_socket()
    # Listening before the gRPC socket appeared, as the executor relies on.
    assert stream_path.is_socket()
    assert inst.enter().return_code == 0  # gRPC
    client = _connect(stream_path, clients)
    assert client.handshake() == HELLO
    assert client.invoke(b"hello").output == b"hello"
    # Plain hooks run on the stream's own thread: no hop to the worker.
    assert client.invoke(b"thread").output == b"flmrun-tasks"
    assert inst.invoke(b"thread").output.startswith(b"flmrun-worker")  # gRPC still works
    none = client.invoke(b"none")
    assert none.return_code == 0 and not none.HasField("output")
    bad = client.invoke(b"str")
    assert bad.return_code == -1 and "must return bytes or None, not str" in bad.message
    big = os.urandom(5 * 1024 * 1024)
    assert client.invoke(big).output == big
    assert inst.leave().return_code == 0
    assert events(workdir) == ["enter", "leave"]


def test_a_failing_task_is_a_result_with_its_traceback(
    streamed: Callable[..., Instance], stream_path: Path, clients: list[StreamClient]
) -> None:
    inst = streamed(*TESTAPP)
    inst.wait_socket()
    client = _connect(stream_path, clients)
    client.handshake()
    assert client.enter().return_code == 0  # enter and leave work over the stream too
    result = client.invoke(b"fail:boom")
    assert result.return_code == -1
    head, _, trace = result.message.partition("\n")
    assert head == "RuntimeError: boom"
    assert "Traceback" in trace and "_testapp.py" in trace
    assert "_servicer.py" not in trace and "_stream.py" not in trace  # plumbing left out
    assert client.invoke(b"ok").output == b"echo:ok"  # the stream goes on
    assert client.leave().return_code == 0


def test_an_async_service_runs_on_the_loop(
    streamed: Callable[..., Instance], stream_path: Path, clients: list[StreamClient]
) -> None:
    inst = streamed("-m", "flmrun", "--service", "flmtestsvc:AsyncService")
    inst.wait_socket()
    client = _connect(stream_path, clients)
    client.handshake()
    assert client.enter().return_code == 0
    assert client.invoke(b"x").output == b"x"
    assert client.invoke(b"thread").output == b"MainThread"
    failed = client.invoke(b"raise")
    assert failed.return_code == -1
    assert failed.message.startswith("ValueError: async boom\nTraceback")
    assert "concurrent/futures" not in failed.message


@pytest.mark.parametrize(
    ("hello", "frame", "complaint"),
    [
        (b"HTTP/", None, b"hello"),
        (HELLO, (9, b""), b"unknown method 9"),
        (HELLO, (INVOKE, b"\xff\xff\xff"), b"TaskContext that does not parse"),
    ],
)
def test_a_malformed_stream_is_refused_and_closed(
    streamed: Callable[..., Instance],
    stream_path: Path,
    clients: list[StreamClient],
    hello: bytes,
    frame: tuple[int, bytes] | None,
    complaint: bytes,
) -> None:
    inst = streamed(*TESTAPP)
    inst.wait_socket()
    client = _connect(stream_path, clients, hello)
    if frame is None:
        size, status = HEADER.unpack(client._read(HEADER.size))
        status_text = (status, client._read(size))
    else:
        assert client.handshake() == HELLO
        status_text = client.raw(*frame)
    status, text = status_text
    assert status == ERROR and complaint in text
    with pytest.raises((EOFError, ConnectionError)):
        client.invoke(b"after")  # the instance closed that connection
    # ... and serves the next one, and gRPC, as before.
    again = _connect(stream_path, clients)
    assert again.handshake() == HELLO
    assert again.invoke(b"ok").output == b"echo:ok"
    assert inst.invoke(b"ok").output == b"echo:ok"


def test_sigterm_removes_the_stream_socket_and_ends_connections(
    streamed: Callable[..., Instance], stream_path: Path, clients: list[StreamClient]
) -> None:
    inst = streamed(*TESTAPP)
    inst.wait_socket()
    client = _connect(stream_path, clients)
    client.handshake()
    assert client.invoke(b"ok").output == b"echo:ok"
    inst.signal_group(signal.SIGTERM)
    assert inst.wait_exit() == 0
    assert not stream_path.exists()
    assert not Path(inst.sock).exists()
    assert client.sock.recv(1) == b""  # the connection was ended, not left hanging


def test_no_stream_without_the_variable(spawn: Callable[..., Instance], workdir: Path) -> None:
    inst = spawn(*TESTAPP)
    inst.wait_socket()
    assert inst.invoke(b"ok").output == b"echo:ok"
    assert list(workdir.glob("*.tasks")) == []


def test_a_relative_stream_path_is_a_clear_startup_error(
    spawn: Callable[..., Instance], base_env: dict[str, str]
) -> None:
    inst = spawn(*TESTAPP, env={**base_env, "FLMRUN_TASK_STREAM": "x.tasks"})
    assert inst.wait_exit() == 2
    assert "FLMRUN_TASK_STREAM is 'x.tasks': it must be an absolute path" in inst.stderr()
    assert sorted(p.name for p in Path(inst.sock).parent.iterdir() if p.is_socket()) == []


def test_the_frame_reader_reassembles_frames_however_they_arrive() -> None:
    import socket as _socket
    import threading as _threading

    from flmrun._stream import FrameReader, _Malformed

    big = os.urandom(3 * FrameReader.CHUNK + 7)
    small = [os.urandom(n) for n in (1, 5, 700, FrameReader.CHUNK)]
    left, right = _socket.socketpair()
    wire = b"".join(small) + big + b"tail"

    def send_in_odd_pieces() -> None:
        for start in range(0, len(wire), 4093):
            left.sendall(wire[start : start + 4093])
        left.close()

    sender = _threading.Thread(target=send_in_odd_pieces)
    sender.start()
    reader = FrameReader(right)
    try:
        assert [reader.read(len(p)) for p in small] == small
        assert reader.read(len(big)) == big
        with pytest.raises(_Malformed, match="4 bytes into a 10-byte frame"):
            reader.read(10)
    finally:
        sender.join()
        right.close()
    quiet, peer = _socket.socketpair()
    quiet.close()
    try:
        assert FrameReader(peer).read(5) is None  # closed before a frame: the end
    finally:
        peer.close()
