"""Benchmark process for Flame over the real path: ``flamepy.Runner`` against a
``flame-local up`` in its own process, over gRPC and Flight only (no /dev/shm
hand-over, no in-process calls), as a real cluster is used.

It also measures two floors on the same server: a bare grpcio client doing
CreateTask + WatchTask on ``flmping`` (the protocol's own cost of one call), and a
bare grpcio echo server and client (the cost of one RPC on this machine).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import main  # noqa: E402
from _flame import FlameAdapter  # noqa: E402

UP_TIMEOUT = 60.0
ECHO_SERVER = """
import asyncio, sys, grpc, grpc.aio

async def main(path):
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("Echo", {"Ping": handler}),)
    )
    server.add_insecure_port("unix:" + path)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

asyncio.run(main(sys.argv[1]))
"""


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RemoteFlameAdapter(FlameAdapter):
    """The Runner against a cluster in another process."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
        self._cluster = subprocess.Popen(
            [sys.executable, "-m", "flame_testkit._cli", "up", "--no-local-transfer"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._cluster.stdout is not None
        while "FLAME_CACHE_ENDPOINT" not in os.environ:
            line = self._cluster.stdout.readline().strip()
            if not line:
                raise RuntimeError("flame-local up exited before printing its endpoints")
            key, _, value = line.partition("=")
            os.environ[key] = value
        self._echo: subprocess.Popen[str] | None = None
        super().__init__()

    def floors(self, n: int) -> dict[str, Callable[[], float]]:
        import grpc

        from flamepy.proto import frontend_pb2 as fe
        from flamepy.proto import frontend_pb2_grpc, types_pb2

        frontend = grpc.insecure_channel("unix:" + os.environ["FLAME_ENDPOINT"][len("unix://") :])
        stub = frontend_pb2_grpc.FrontendStub(frontend)
        sid = f"floor-{os.getpid()}"
        spec = types_pb2.SessionSpec(application="flmping")
        stub.CreateSession(fe.CreateSessionRequest(session_id=sid, session=spec), timeout=30)
        terminal = {types_pb2.Succeed, types_pb2.Failed, types_pb2.Cancelled}

        def task_floor() -> float:
            start = time.perf_counter()
            for _ in range(n):
                task = stub.CreateTask(
                    fe.CreateTaskRequest(task=types_pb2.TaskSpec(session_id=sid, input=b"x")),
                    timeout=30,
                )
                watch = fe.WatchTaskRequest(session_id=sid, task_id=task.metadata.id)
                for update in stub.WatchTask(watch, timeout=30):
                    if update.status.state in terminal:
                        break
            return (time.perf_counter() - start) / n * 1e6

        socket = Path(tempfile.mkdtemp(prefix="bench-echo-")) / "echo.sock"
        self._echo = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER, str(socket)], stdout=subprocess.PIPE, text=True
        )
        assert self._echo.stdout is not None
        self._echo.stdout.readline()
        echo = grpc.insecure_channel(f"unix:{socket}").unary_unary("/Echo/Ping")

        def echo_floor() -> float:
            start = time.perf_counter()
            for _ in range(n):
                echo(b"x", timeout=30)
            return (time.perf_counter() - start) / n * 1e6

        return {"floor_task_us": task_floor, "floor_echo_us": echo_floor}

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._echo is not None:
                _stop(self._echo)
            _stop(self._cluster)


if __name__ == "__main__":
    main(RemoteFlameAdapter, T0)
