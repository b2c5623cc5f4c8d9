"""Instance processes for flmrun's tests: start one, drive it as an executor does.

Every instance is a real process (``python -m flmrun`` or the testkit's test app) in
its own process group, bound to a real Unix socket under a short /tmp directory.
The fixtures (``conftest.py``) kill each one (SIGKILL to the group) at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from flamepy.proto import shim_pb2, shim_pb2_grpc, types_pb2

WAIT = 30.0  # generous upper bound for anything that should take well under a second
RPC_TIMEOUT = 30.0


# --------------------------------------------------------------------------- helpers


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Instance:
    """One instance process plus the client side of its socket."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.sock = str(workdir / "x.sock")
        self.stdout_path = workdir / "stdout"
        self.stderr_path = workdir / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own process group, like the executor does
            )
        self._channel: grpc.Channel | None = None

    # -- process

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal_group(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        if self._channel is not None:
            self._channel.close()
        # The group outlives its leader only if the leader forked; kill it regardless.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT)

    # -- socket and RPCs

    def wait_socket(self, timeout: float = WAIT) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"instance exited with {self.proc.returncode} before binding:\n" + self.stderr()
                )
            return os.path.exists(self.sock)

        wait_for(ready, timeout, f"socket {self.sock}")

    @property
    def stub(self) -> shim_pb2_grpc.InstanceStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel("unix://" + self.sock)
        return shim_pb2_grpc.InstanceStub(self._channel)  # type: ignore[no-untyped-call]

    def enter(self, common_data: bytes | None = None, session_id: str = "s-1") -> types_pb2.Result:
        ctx = shim_pb2.SessionContext(
            session_id=session_id,
            application=shim_pb2.ApplicationContext(name="app", command=sys.executable),
        )
        if common_data is not None:
            ctx.common_data = common_data
        result: types_pb2.Result = self.stub.OnSessionEnter(
            ctx, timeout=RPC_TIMEOUT, wait_for_ready=True
        )
        return result

    def invoke(self, data: bytes | None, task_id: str = "1") -> types_pb2.TaskResult:
        ctx = shim_pb2.TaskContext(task_id=task_id, session_id="s-1")
        if data is not None:
            ctx.input = data
        result: types_pb2.TaskResult = self.stub.OnTaskInvoke(ctx, timeout=RPC_TIMEOUT)
        return result

    def leave(self) -> types_pb2.Result:
        result: types_pb2.Result = self.stub.OnSessionLeave(
            types_pb2.EmptyRequest(), timeout=RPC_TIMEOUT
        )
        return result


SERVICES_MODULE = '''
"""Services used by flmrun's tests; paths come from environment variables."""
import asyncio
import os
import threading

import flmrun


def _record(event):
    path = os.environ.get("FLMRUN_TEST_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(event + "\\n")


class Recorder(flmrun.FlameService):
    def on_session_enter(self, context):
        _record("enter")

    def on_task_invoke(self, context):
        if context.input == b"thread":
            return threading.current_thread().name.encode()
        if context.input == b"str":
            return "not bytes"
        if context.input == b"none":
            return None
        return context.input

    def on_session_leave(self):
        _record("leave")


class AsyncService(flmrun.FlameService):
    async def on_session_enter(self, context):
        await asyncio.sleep(0)
        self.prefix = context.common_data() or b""
        _record("enter")

    async def on_task_invoke(self, context):
        await asyncio.sleep(0.01)
        if context.input == b"raise":
            raise ValueError("async boom")
        if context.input == b"thread":
            return threading.current_thread().name.encode()
        return self.prefix + (context.input or b"")

    async def on_session_leave(self):
        _record("leave")
        raise RuntimeError("leave always reports success")


class NoInvoke(flmrun.FlameService):
    pass


class NotAService:
    pass


class BadInit(flmrun.FlameService):
    def __init__(self):
        raise OSError("no database")
'''

SLOW_MODULE = '''
"""Blocks at import time until the test creates the release file."""
import os
import time

import flmrun

with open(os.environ["FLMRUN_TEST_STARTED"], "w"):
    pass
_deadline = time.monotonic() + 60
while not os.path.exists(os.environ["FLMRUN_TEST_RELEASE"]):
    if time.monotonic() > _deadline:
        raise RuntimeError("never released")
    time.sleep(0.02)


class Slow(flmrun.FlameService):
    def on_task_invoke(self, context):
        return b"slow:" + (context.input or b"")


with open(os.environ["FLMRUN_TEST_FINISHED"], "w"):
    pass
'''


TESTAPP = ("-m", "flame_testkit._testapp")


def events(workdir: Path) -> list[str]:
    path = workdir / "events"
    return path.read_text().split() if path.exists() else []
