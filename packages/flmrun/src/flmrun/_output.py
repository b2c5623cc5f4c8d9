"""Remote output: what a Runner session's code prints and logs, sent to its client.

The client names a cache object in the session's context (``flame_output``): the
session's output *directory*.  This instance captures its own stdout and stderr at
the file-descriptor level (so subprocesses and C code are caught too) and the log
records of user loggers, and sends them to the cache as patches:

* its own object ``<directory>-<executor>-<n>`` (put by this instance, one writer),
  patched with ``{"lines": [[stream, text], ...]}`` at most every
  :data:`FLUSH_INTERVAL` seconds, and before each task's result is returned, so a
  call's output is in the cache before its result is;
* after :data:`ROLL_AFTER` patches it puts ``<n+1>`` and ends ``<n>`` with
  ``{"next": key}`` (the cache keeps at most 1000 patches per object);
* the directory is patched once with ``{"join": key}`` when the first object exists.

Everything still goes to the instance's own log files (the launch contract's
``.out`` and ``.err``).  Output is never allowed to block or fail the user's code:
above :data:`MAX_PENDING` bytes waiting, lines are dropped and counted, and a cache
that cannot be reached only costs the lines (with one warning in the log).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from flamepy.core.cache import ObjectRef, patch_object, put_object

log = logging.getLogger("flmrun.output")

FLUSH_INTERVAL = 0.1
"""Seconds between two sends of output, at most (when there is output)."""
ROLL_AFTER = 900
"""Patches per output object before the next object is started (the cache takes 1000)."""
ROLL_ENV = "FLMRUN_OUTPUT_ROLL"
"""Overrides :data:`ROLL_AFTER` (tests use a small number to see objects roll over)."""
MAX_PENDING = 4 * 1024 * 1024
"""Bytes of output waiting to be sent beyond which lines are dropped (and counted)."""
PENDING_ENV = "FLMRUN_OUTPUT_BUFFER"
"""Overrides :data:`MAX_PENDING` (bytes)."""
MAX_PATCH = 1024 * 1024
"""Bytes of output in one patch, at most."""
MAX_LINE = 64 * 1024
"""A line longer than this is cut (a progress bar without newlines, say)."""
SYNC_TIMEOUT = 1.0
"""Seconds a task's end waits for its output to be read from the pipes."""
SEND_TIMEOUT = 10.0
"""Seconds a task's end waits for its output to be sent."""
_SYNC = b"\x1e\x1fflmrun-output-sync\x1f\x1e"
_QUIET = ("flmrun", "flamepy", "grpc", "pyarrow", "asyncio", "urllib3", "concurrent")
"""Loggers whose records are the instance's own, not the user's: not sent."""


def executor_id() -> str:
    endpoint = os.environ.get("FLAME_INSTANCE_ENDPOINT", "")
    name = os.path.basename(endpoint)
    return name[: -len(".sock")] if name.endswith(".sock") else (name or str(os.getpid()))


class _Pipe:
    """One captured stream: ``fd`` now writes into a pipe that a thread reads, copies
    to the original file, and hands over line by line."""

    def __init__(self, fd: int, stream: str, sink: Callable[[str, str], None]) -> None:
        self.stream = stream
        self._sink = sink
        self.original = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._read_end = read_end
        self._carry = b""
        self._synced = threading.Condition()
        self._sync_seen = 0
        self._thread = threading.Thread(target=self._main, name=f"flmrun-{stream}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            try:
                data = os.read(self._read_end, 65536)
            except OSError:
                return
            if not data:
                return
            self._take(data)

    def _take(self, data: bytes) -> None:
        buf = self._carry + data
        syncs = buf.count(_SYNC)
        if syncs:
            buf = buf.replace(_SYNC, b"")
        lines = buf.split(b"\n")
        self._carry = lines.pop()
        if len(self._carry) > MAX_LINE:
            lines.append(self._carry)
            self._carry = b""
        written = data.replace(_SYNC, b"") if syncs else data
        if written:
            with contextlib.suppress(OSError):  # to the instance's log file, as before
                os.write(self.original, written)
        for line in lines:
            self._sink(self.stream, line[:MAX_LINE].decode("utf-8", "replace"))
        if syncs:
            with self._synced:
                self._sync_seen += syncs
                self._synced.notify_all()

    def sync(self, fd: int, timeout: float) -> bool:
        """Wait until everything written to ``fd`` so far has been read."""
        with self._synced:
            target = self._sync_seen + 1
        try:
            os.write(fd, _SYNC)
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        with self._synced:
            while self._sync_seen < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._synced.wait(left)
        return True


class _UserRecords(logging.Handler):
    """Sends the records of user loggers (not the instance's own) as ``log`` lines."""

    def __init__(self, sink: Callable[[str, str], None]) -> None:
        super().__init__(logging.NOTSET)
        self._sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".", 1)[0] in _QUIET:
            return
        try:
            text = self.format(record)
        except Exception:
            return
        for line in text.splitlines() or [""]:
            self._sink("log", line)


class Output:
    """The instance's output capture (one per process) and its sender."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # pending lines and the target
        self._send_lock = threading.Lock()  # one send at a time
        self._wake = threading.Event()
        self._pending: deque[list[str]] = deque()
        self._pending_bytes = 0
        self._dropped = 0
        self._directory: str | None = None
        self._object: ObjectRef | None = None
        self._sequence = 0
        self._patches = 0
        self._broken = False
        self._pipes: dict[int, _Pipe] = {}
        self._handler: _UserRecords | None = None
        self._header = {"id": executor_id(), "pid": os.getpid(), "host": socket.gethostname()}
        self._thread: threading.Thread | None = None
        self._roll_after = _env_int(ROLL_ENV, ROLL_AFTER, 1, ROLL_AFTER)
        self._max_pending = _env_int(PENDING_ENV, MAX_PENDING, 1024, 1 << 30)

    # -- capture -------------------------------------------------------------------------

    def _install(self) -> None:
        if self._pipes:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        self._pipes = {1: _Pipe(1, "stdout", self._add), 2: _Pipe(2, "stderr", self._add)}
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, io.TextIOWrapper):
                with contextlib.suppress(OSError, ValueError):
                    stream.reconfigure(line_buffering=True)
        # The instance's own log records keep going to its log file, not to the client.
        own_err = os.fdopen(os.dup(self._pipes[2].original), "w", buffering=1)
        root = logging.getLogger()
        for handler in root.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.stderr,
                sys.__stderr__,
            ):
                handler.setStream(own_err)
        self._handler = _UserRecords(self._add)
        root.addHandler(self._handler)
        self._thread = threading.Thread(target=self._main, name="flmrun-output", daemon=True)
        self._thread.start()

    def _add(self, stream: str, text: str) -> None:
        with self._lock:
            if self._directory is None or self._broken:
                return
            if self._pending_bytes + len(text) > self._max_pending:
                self._dropped += 1
                return
            self._pending.append([stream, text])
            self._pending_bytes += len(text) + 16

    # -- sessions ------------------------------------------------------------------------

    def start(self, directory: str) -> None:
        """Send output to the client's ``directory`` (a session enters)."""
        with self._lock:
            self._directory = directory
            self._object = None
            self._sequence = 0
            self._patches = 0
            self._broken = False
        self._install()

    def stop(self) -> None:
        """Send what is left, then stop sending (the session leaves)."""
        if self._directory is None:
            return
        self.flush()
        with self._lock:
            self._directory = None
            self._object = None
            self._pending.clear()
            self._pending_bytes = 0

    def flush(self, timeout: float = SEND_TIMEOUT) -> None:
        """Send everything printed so far (at a task's end, before its result)."""
        if self._directory is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        for fd, pipe in self._pipes.items():
            pipe.sync(fd, SYNC_TIMEOUT)
        self._send(timeout)

    # -- sending -------------------------------------------------------------------------

    def _main(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            try:
                self._send(SEND_TIMEOUT)
            except Exception:  # never let the sender die
                log.exception("sending remote output failed")

    def _take(self) -> tuple[str | None, list[list[str]], int]:
        with self._lock:
            taken: list[list[str]] = []
            size = 0
            while self._pending and size < MAX_PATCH:
                line = self._pending.popleft()
                taken.append(line)
                size += len(line[1]) + 16
            self._pending_bytes = max(0, self._pending_bytes - size)
            dropped, self._dropped = self._dropped, 0
            return self._directory, taken, dropped

    def _send(self, timeout: float) -> None:
        if not self._send_lock.acquire(timeout=timeout):
            return
        try:
            while True:
                directory, lines, dropped = self._take()
                if directory is None or (not lines and not dropped):
                    return
                if dropped:
                    lines.append(["stderr", f"[flmrun: {dropped} line(s) of output dropped]"])
                self._patch(directory, {"lines": lines})
        finally:
            self._send_lock.release()

    def _patch(self, directory: str, delta: dict[str, Any]) -> None:
        try:
            if self._object is None:
                self._object = put_object(self._key(directory), dict(self._header))
                patch_object(_directory_ref(self._object, directory), {"join": self._object.key})
            elif self._patches >= self._roll_after:
                self._sequence += 1
                following = put_object(self._key(directory), dict(self._header))
                patch_object(self._object, {"next": following.key})
                self._object, self._patches = following, 0
            patch_object(self._object, delta)
            self._patches += 1
        except Exception as exc:
            with self._lock:
                self._broken = True
                self._pending.clear()
                self._pending_bytes = 0
            log.warning(
                "remote output of this session is not sent from now on: %s "
                "(it still goes to this instance's log files)",
                exc,
            )

    def _key(self, directory: str) -> str:
        return f"{directory}-{self._header['id']}-{self._sequence}"


def _env_int(name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        log.warning("%s=%r is not a whole number: using %d", name, os.environ[name], default)
        return default
    return min(max(value, low), high)


def _directory_ref(own: ObjectRef, directory: str) -> ObjectRef:
    return ObjectRef(endpoint=own.endpoint, key=directory, version=0)


OUTPUT = Output()
"""The process's output capture (an instance serves one session at a time)."""
