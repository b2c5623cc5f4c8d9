"""The executor side of flmrun's task stream (see ``flmrun._stream`` for the wire).

The local executor manager offers an instance a stream socket through
``FLMRUN_TASK_STREAM``.  If the instance listens there by the time its gRPC socket
appears, the executor runs its tasks over the stream: one message each way on a
plain Unix socket instead of a gRPC call.  Session enter and leave stay on gRPC,
so every binding still goes through the flame.v1 Instance service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from flamepy.proto import shim_pb2, types_pb2
from flmrun._stream import ERROR, HEADER, HELLO, INVOKE, MAX_FRAME, OK

log = logging.getLogger("flame_testkit.executor")

CONNECT_TIMEOUT = 5.0
"""Seconds to connect and exchange the hello; past it the executor keeps to gRPC."""
JOIN_LIMIT = 64 * 1024
"""Frames up to this size are sent in one write (header and payload joined)."""


class TaskStreamError(Exception):
    """The stream failed mid-call; ``code`` names it like a gRPC status would."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class TaskStreamClient:
    """One connection to an instance's task stream; calls go one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._broken: str | None = None
        self._aborted: str | None = None

    @classmethod
    async def connect(cls, path: Path) -> TaskStreamClient | None:
        """Connect and shake hands; None (and gRPC it is) if that does not work."""
        opened: list[asyncio.StreamWriter] = []

        async def shake_hands() -> TaskStreamClient:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_FRAME)
            opened.append(writer)
            writer.write(HELLO)
            if await reader.readexactly(len(HELLO)) != HELLO:
                raise ConnectionError("the instance answered with another protocol")
            return cls(reader, writer)

        try:
            return await asyncio.wait_for(shake_hands(), CONNECT_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            log.info("not using the task stream at %s: %r", path, exc)
            for writer in opened:
                writer.close()
            return None

    async def invoke(self, context: shim_pb2.TaskContext) -> types_pb2.TaskResult:
        """``OnTaskInvoke`` over the stream; :class:`TaskStreamError` if it breaks."""
        payload = await self._call(INVOKE, context.SerializeToString())
        try:
            return types_pb2.TaskResult.FromString(payload)
        except Exception as exc:
            raise TaskStreamError(
                "INTERNAL", f"the instance sent a malformed reply: {exc}"
            ) from exc

    async def _call(self, method: int, payload: bytes) -> bytes:
        async with self._lock:
            if self._broken is not None:
                raise TaskStreamError("UNAVAILABLE", self._broken)
            # Until the reply is read whole, the stream is out of step: a call that
            # fails or is cancelled midway leaves it unusable.
            self._broken = "an earlier call on the task stream did not finish"
            try:
                header = HEADER.pack(len(payload), method)
                if len(payload) <= JOIN_LIMIT:  # one send, not two
                    self._writer.write(header + payload)
                else:
                    self._writer.write(header)
                    self._writer.write(payload)
                size, status = HEADER.unpack(await self._reader.readexactly(HEADER.size))
                reply = await self._reader.readexactly(size) if size else b""
            except asyncio.IncompleteReadError as exc:
                raise TaskStreamError(
                    "UNAVAILABLE",
                    self._aborted or "the instance closed its task stream during the call",
                ) from exc
            except OSError as exc:
                raise TaskStreamError("UNAVAILABLE", f"the task stream failed: {exc}") from exc
            if status == OK:
                self._broken = None
                return reply
        # The instance closes the stream after an ERROR reply.
        if status == ERROR:
            raise TaskStreamError("INTERNAL", reply.decode(errors="replace"))
        raise TaskStreamError("INTERNAL", f"the instance answered with status {status}")

    def abort(self, reason: str) -> None:
        """End the call in progress (it fails with ``reason``) and the stream."""
        self._aborted = reason
        self._writer.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
