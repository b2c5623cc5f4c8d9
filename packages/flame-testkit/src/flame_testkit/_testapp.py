"""The test application the local cluster registers by default.

Run as ``python -m flame_testkit._testapp`` with ``FLAME_INSTANCE_ENDPOINT`` set. Each task
input is a small command, so tests can make an instance succeed, fail, hang or crash:

==================  ===========================================================
``exit:<code>``     ``os._exit(code)``: the instance dies mid-task
``fail:<text>``     raise ``RuntimeError(text)``: the task fails
``sleep:<secs>``    sleep, then return ``b"slept"``
``pid``             the instance's process id, as decimal bytes
``env:<NAME>``      the value of environment variable NAME (``b""`` if unset)
``common``          the session's common_data (``b""`` if none)
``who:<text>``      ``b"<pid>:<text>"``: which instance ran the task
``span:<secs>``     sleep, then ``b"<pid>:<start>:<end>"`` (monotonic clock)
``pgid``            the instance's process group id
``thread``          the name of the thread running the task (which transport ran it)
``cwd``             the instance's working directory
``print:<text>``    write text to stdout and stderr, return ``b"printed"``
``big:<n>``         ``n`` bytes of ``b"x"``
``orphan``          start a child in the same process group that ignores SIGTERM
anything else       ``b"echo:" + input`` (``b"echo:"`` for no input)
==================  ===========================================================

A session whose common_data is ``b"fail-enter"`` is refused in ``on_session_enter``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from flmrun import FlameService, SessionContext, TaskContext

__all__ = ["TestAppService", "main"]

_ORPHAN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


class TestAppService(FlameService):
    """Interprets each task input as a command (see the module docstring)."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self) -> None:
        self.common_data: bytes | None = None

    def on_session_enter(self, context: SessionContext) -> None:
        if context.common_data() == b"fail-enter":
            raise RuntimeError("enter refused")
        self.common_data = context.common_data()

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        data = context.input
        if data is None:
            return b"echo:"
        if data.startswith(b"exit:"):
            os._exit(int(data[len(b"exit:") :]))
        if data.startswith(b"fail:"):
            raise RuntimeError(data[len(b"fail:") :].decode(errors="replace"))
        if data.startswith(b"sleep:"):
            time.sleep(float(data[len(b"sleep:") :]))
            return b"slept"
        if data == b"pid":
            return str(os.getpid()).encode()
        if data.startswith(b"env:"):
            name = data[len(b"env:") :].decode()
            return os.environ.get(name, "").encode()
        if data == b"common":
            return self.common_data or b""
        return self._more(data)

    def _more(self, data: bytes) -> bytes:
        if data.startswith(b"who:"):
            return f"{os.getpid()}:".encode() + data[len(b"who:") :]
        if data.startswith(b"span:"):
            start = time.monotonic()
            time.sleep(float(data[len(b"span:") :]))
            return f"{os.getpid()}:{start}:{time.monotonic()}".encode()
        if data == b"pgid":
            return str(os.getpgid(0)).encode()
        if data == b"thread":
            return threading.current_thread().name.encode()
        if data == b"cwd":
            return os.getcwd().encode()
        if data.startswith(b"print:"):
            text = data[len(b"print:") :].decode(errors="replace")
            print(text, flush=True)
            print(text, file=sys.stderr, flush=True)
            return b"printed"
        if data.startswith(b"big:"):
            return b"x" * int(data[len(b"big:") :])
        if data == b"orphan":
            child = subprocess.Popen(
                [sys.executable, "-c", _ORPHAN],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
            assert child.stdout is not None
            child.stdout.readline()  # wait until SIGTERM is ignored
            return str(child.pid).encode()
        return b"echo:" + data

    def on_session_leave(self) -> None:
        self.common_data = None


def main() -> int:
    """Serve :class:`TestAppService` until SIGTERM; returns the exit status."""
    from flame_testkit._apps import serve

    return serve(TestAppService, "flame_testkit._testapp")


if __name__ == "__main__":
    sys.exit(main())
