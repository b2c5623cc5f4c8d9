"""Run Python and shell scripts on ``flmexec``, the application every Flame
cluster registers at start.

A sandbox is one session of ``flmexec``; each script is one task of it::

    from flamepy.tools import Sandbox, SandboxAttr

    with Sandbox.create(SandboxAttr(language="python", timeout=60)) as sb:
        print(sb.run_code("import sys; print(sys.stdin.read().upper())", b"hi").text())

The wire is flmexec's JSON, unchanged:

* session common_data: ``{"language", "runtime", "min_instances",
  "max_instances", "resreq": {"cpu", "memory", "gpu"} | null}``;
* task input: ``{"language", "code", "input": [bytes as ints], "runtime"?}``;
* task output: ``{"data": [bytes as ints]}``, the script's stdout.

``timeout`` is not on the wire: the client stops waiting after that many seconds
and raises :class:`~flamepy.FlameTimeoutError`.  Flame has no call that cancels
one task, so the script may go on running on its instance until the cluster's
own limit (if any) ends it; and since a session with a running task cannot be
closed, closing such a sandbox closes its session once its scripts have ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from flamepy._async_client import AsyncConnection, AsyncSession, task_outcome
from flamepy._client import Connection, TaskFuture, _chain, default_connection
from flamepy._errors import (
    FlameError,
    FlameTimeoutError,
    InternalError,
    InvalidArgumentError,
    InvalidStateError,
)
from flamepy._types import ResourceRequirement, SessionAttributes, SessionState, TaskState

__all__ = [
    "DEFAULT_TIMEOUT",
    "FLMEXEC_APP",
    "LANGUAGES",
    "AsyncSandbox",
    "Sandbox",
    "SandboxAttr",
    "SandboxOutput",
]

FLMEXEC_APP: Final = "flmexec"
LANGUAGES: Final = ("python", "shell")
"""The languages flmexec runs (named in any case; stored in lower case)."""
DEFAULT_TIMEOUT: Final = 300.0
"""Seconds a script may take, from submission to result, unless told otherwise."""

CLOSE_RETRY_DELAY = 0.2

Bytes = bytes | bytearray | memoryview
log = logging.getLogger("flamepy.tools.sandbox")
_closing: set[asyncio.Future[None]] = set()
"""Sessions waiting for their scripts to end before they are closed."""


def _positive(value: object, what: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidArgumentError(f"{what} must be a positive number of seconds or None")
    return float(value)


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"{what} must be a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True)
class SandboxAttr:
    """What a sandbox runs and where; fixed when the sandbox is created.

    Invalid values raise :class:`~flamepy.InvalidArgumentError` here, before
    anything reaches the cluster.
    """

    language: str = "python"
    """``"python"`` or ``"shell"`` (any case)."""
    runtime: str | None = None
    """The interpreter: a Python version (``"3.12"``) or a shell (``"bash"``); the
    cluster's default when None."""
    min_instances: int = 0
    max_instances: int | None = None
    """How many instances (scripts at once) the sandbox may use; no limit when None."""
    resreq: ResourceRequirement | None = None
    """Resources of each instance; the cluster's default when None."""
    timeout: float | None = DEFAULT_TIMEOUT
    """Seconds each script may take (client side, not sent); no limit when None."""

    def __post_init__(self) -> None:
        language = self.language
        if not isinstance(language, str) or language.strip().lower() not in LANGUAGES:
            raise InvalidArgumentError(
                f"unsupported sandbox language {language!r}: use one of {', '.join(LANGUAGES)}"
            )
        object.__setattr__(self, "language", language.strip().lower())
        if self.runtime is not None and (
            not isinstance(self.runtime, str) or not self.runtime.strip()
        ):
            raise InvalidArgumentError(
                f"runtime must be a non-empty string (such as '3.12' or 'bash') or None, "
                f"got {self.runtime!r}"
            )
        minimum = _count(self.min_instances, "min_instances")
        if self.max_instances is not None:
            maximum = _count(self.max_instances, "max_instances")
            if maximum < minimum:
                raise InvalidArgumentError(
                    f"max_instances ({maximum}) is below min_instances ({minimum})"
                )
        if self.resreq is not None:
            if not isinstance(self.resreq, ResourceRequirement):
                raise InvalidArgumentError("resreq must be a flamepy.ResourceRequirement or None")
            # A copy: the caller's object stays theirs to change.
            req = self.resreq
            object.__setattr__(self, "resreq", replace(req))
        object.__setattr__(self, "timeout", _positive(self.timeout, "timeout"))


@dataclass(frozen=True)
class SandboxOutput:
    """What a script wrote to its stdout."""

    data: bytes

    def text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.data.decode(encoding, errors)


# -- the wire ---------------------------------------------------------------------


def _encode_attr(attr: SandboxAttr) -> bytes:
    resreq = None
    if attr.resreq is not None:
        resreq = {"cpu": attr.resreq.cpu, "memory": attr.resreq.memory, "gpu": attr.resreq.gpu}
    doc = {
        "language": attr.language,
        "runtime": attr.runtime,
        "min_instances": attr.min_instances,
        "max_instances": attr.max_instances,
        "resreq": resreq,
    }
    return json.dumps(doc).encode()


def _decode_attr(sandbox_id: str, raw: bytes | None, timeout: float | None) -> SandboxAttr:
    what = f"session {sandbox_id!r} is not a sandbox"
    try:
        doc = json.loads(raw or b"")
    except ValueError:
        raise InvalidArgumentError(f"{what}: its common_data is not JSON") from None
    if not isinstance(doc, Mapping) or "language" not in doc:
        raise InvalidArgumentError(f"{what}: its common_data names no language")
    req = doc.get("resreq")
    try:
        resreq = None
        if req is not None:
            resreq = ResourceRequirement(
                cpu=int(req.get("cpu", 0)),
                memory=int(req.get("memory", 0)),
                gpu=int(req.get("gpu", 0)),
            )
        return SandboxAttr(
            language=doc["language"],
            runtime=doc.get("runtime"),
            min_instances=doc.get("min_instances") or 0,
            max_instances=doc.get("max_instances"),
            resreq=resreq,
            timeout=timeout,
        )
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{what}: {exc.message}") from None
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{what}: {exc}") from None


def _encode_script(attr: SandboxAttr, code: str, input: Bytes | None) -> bytes:
    if not isinstance(code, str):
        raise InvalidArgumentError(f"code must be a str, not {type(code).__name__}")
    if input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(
            f"input must be bytes or None, not {type(input).__name__}; encode text first"
        )
    # Always a list: an absent input would leave the script's stdin open on Flame's
    # flmexec, and a script that reads it would wait forever.
    doc: dict[str, Any] = {
        "language": attr.language,
        "code": code,
        "input": list(bytes(input or b"")),
    }
    if attr.runtime is not None:
        doc["runtime"] = attr.runtime
    return json.dumps(doc).encode()


def _decode_output(raw: bytes | None) -> SandboxOutput:
    try:
        doc = json.loads(raw or b"")
        return SandboxOutput(bytes(doc["data"]))
    except (ValueError, TypeError, KeyError) as exc:
        shown = (raw or b"")[:80]
        raise InternalError(
            f"flmexec returned {shown!r}, not its output JSON {{'data': [...]}}: {exc}"
        ) from None


# -- asyncio ----------------------------------------------------------------------


class AsyncSandbox:
    """A sandbox for asyncio code, on an :class:`~flamepy.AsyncConnection`."""

    def __init__(self, session: AsyncSession, attr: SandboxAttr) -> None:
        self._session = session
        self._attr = attr
        self._closed = False

    @classmethod
    async def create(
        cls, attr: SandboxAttr | None = None, *, connection: AsyncConnection
    ) -> AsyncSandbox:
        """A new sandbox (a new session of ``flmexec``) with ``attr``."""
        attr = _checked(attr)
        session = await connection.create_session(_session_attributes(attr))
        return cls(session, attr)

    @classmethod
    async def open(
        cls,
        sandbox_id: str,
        *,
        connection: AsyncConnection,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> AsyncSandbox:
        """The open sandbox ``sandbox_id``, with its attributes read back from the
        cluster; ``timeout`` (not stored there) is this client's limit per script."""
        timeout = _positive(timeout, "timeout")
        session = await connection.open_session(sandbox_id)
        return cls(session, _attr_of(session, timeout))

    @property
    def sandbox_id(self) -> str:
        return self._session.id

    @property
    def id(self) -> str:
        return self._session.id

    @property
    def attr(self) -> SandboxAttr:
        return self._attr

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.id} {self._attr.language} {state}>"

    def _prepare(
        self, code: str, input: Bytes | None, timeout: float | None
    ) -> tuple[bytes, float | None]:
        """Check and encode one script (raising at once, not in a future)."""
        if self._closed:
            raise InvalidStateError(f"sandbox {self.id} is closed")
        limit = self._attr.timeout if timeout is None else _positive(timeout, "timeout")
        return _encode_script(self._attr, code, input), limit

    async def _send(self, payload: bytes, limit: float | None) -> SandboxOutput:
        conn = self._session.connection
        task_id = await conn.create_task_id(self.id, payload)
        try:
            task = await conn.wait_task(self.id, task_id, limit)
        except FlameTimeoutError:
            if limit is None:  # not our limit: a deadline of the client underneath
                raise
            raise FlameTimeoutError(
                f"the {self._attr.language} script in sandbox {self.id} did not finish "
                f"within {limit:g}s (task {task_id}); it may still be running there: "
                "Flame cannot cancel one task"
            ) from None
        return _decode_output(task_outcome(task))

    async def run_code(
        self, code: str, input: Bytes | None = None, *, timeout: float | None = None
    ) -> SandboxOutput:
        """Run ``code`` with ``input`` on its stdin and return its stdout.

        ``timeout``: seconds, this call only (``attr.timeout`` when None).  Raises
        TaskFailedError (its message ends with the script's stderr) when the script
        fails, FlameTimeoutError when it takes longer.
        """
        payload, limit = self._prepare(code, input, timeout)
        return await self._send(payload, limit)

    def submit_code(
        self, code: str, input: Bytes | None = None, *, timeout: float | None = None
    ) -> asyncio.Task[SandboxOutput]:
        """Start :meth:`run_code` as an asyncio task (arguments checked now)."""
        payload, limit = self._prepare(code, input, timeout)
        return asyncio.ensure_future(self._send(payload, limit))

    async def close(self) -> None:
        """Close the sandbox's session; again is a no-op.

        A session with a running script (one this client gave up waiting for)
        cannot be closed yet: it is then closed in the background once its scripts
        have ended, and the sandbox is closed for this client at once.
        """
        if self._closed:
            return
        self._closed = True
        if self._session.state != SessionState.OPEN:
            return
        if not await _try_close(self._session):
            log.warning(
                "sandbox %s: %d script(s) still running; its session is closed when they end",
                self.id,
                self._session.running,
            )
            closing = asyncio.ensure_future(_close_when_idle(self._session))
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _try_close(session: AsyncSession) -> bool:
    """Close ``session``; False when it still has running tasks (and stays open)."""
    try:
        await session.close()
    except FlameError:  # the server refuses to close a session with running tasks
        await session.refresh()
        if session.state == SessionState.OPEN and session.running > 0:
            return False
        if session.state == SessionState.OPEN:
            raise
    return True


async def _close_when_idle(session: AsyncSession) -> None:
    try:
        while True:
            running = [t.id async for t in session.list_tasks() if t.state == TaskState.RUNNING]
            for task_id in running:
                await session.wait_task(task_id)
            if await _try_close(session):
                return
            await asyncio.sleep(CLOSE_RETRY_DELAY)
    except Exception:
        log.exception("sandbox %s: closing its session failed", session.id)


def _checked(attr: SandboxAttr | None) -> SandboxAttr:
    if attr is None:
        return SandboxAttr()
    if not isinstance(attr, SandboxAttr):
        raise InvalidArgumentError(f"attr must be a SandboxAttr, not {type(attr).__name__}")
    return attr


def _session_attributes(attr: SandboxAttr) -> SessionAttributes:
    return SessionAttributes(
        application=FLMEXEC_APP,
        common_data=_encode_attr(attr),
        min_instances=attr.min_instances,
        max_instances=attr.max_instances,
        resreq=attr.resreq,
    )


def _attr_of(session: AsyncSession, timeout: float | None) -> SandboxAttr:
    if session.application != FLMEXEC_APP:
        raise InvalidArgumentError(
            f"session {session.id!r} is not a sandbox: it runs {session.application!r}, "
            f"not {FLMEXEC_APP!r}"
        )
    return _decode_attr(session.id, session.common_data(), timeout)


# -- blocking ---------------------------------------------------------------------


class Sandbox:
    """A sandbox: run Python or shell scripts on the cluster, one task each.

    ``connection`` defaults to flamepy's shared connection (flame.yaml and the
    FLAME_* variables), as :func:`flamepy.create_session` does.
    """

    def __init__(self, connection: Connection, inner: AsyncSandbox) -> None:
        self.connection = connection
        self._inner = inner

    @classmethod
    def create(
        cls, attr: SandboxAttr | None = None, *, connection: Connection | None = None
    ) -> Sandbox:
        """A new sandbox (a new session of ``flmexec``) with ``attr``."""
        attr = _checked(attr)  # before connecting: a usage error needs no cluster
        conn = connection if connection is not None else default_connection()
        return cls(conn, conn._run(AsyncSandbox.create(attr, connection=conn._inner)))

    @classmethod
    def open(
        cls,
        sandbox_id: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        connection: Connection | None = None,
    ) -> Sandbox:
        """The open sandbox ``sandbox_id``, with its attributes read back from the
        cluster; ``timeout`` (not stored there) is this client's limit per script."""
        timeout = _positive(timeout, "timeout")
        conn = connection if connection is not None else default_connection()
        coro = AsyncSandbox.open(sandbox_id, connection=conn._inner, timeout=timeout)
        return cls(conn, conn._run(coro))

    @property
    def sandbox_id(self) -> str:
        return self._inner.id

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def attr(self) -> SandboxAttr:
        return self._inner.attr

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Sandbox {self.id} {self.attr.language} {state}>"

    def run_code(
        self, code: str, input: Bytes | None = None, *, timeout: float | None = None
    ) -> SandboxOutput:
        """Run ``code`` with ``input`` on its stdin and return its stdout.

        ``timeout``: seconds, this call only (``attr.timeout`` when None).  Raises
        TaskFailedError (its message ends with the script's stderr) when the script
        fails, FlameTimeoutError when it takes longer.
        """
        payload, limit = self._inner._prepare(code, input, timeout)
        return self.connection._run(self._inner._send(payload, limit))

    def submit_code(
        self, code: str, input: Bytes | None = None, *, timeout: float | None = None
    ) -> TaskFuture:
        """Start :meth:`run_code` without blocking: a future of its SandboxOutput
        (``result(timeout)``, or ``await`` it).  Arguments are checked now."""
        payload, limit = self._inner._prepare(code, input, timeout)
        future = TaskFuture()
        _chain(self.connection._loop.submit(self._inner._send(payload, limit)), future)
        return future

    def close(self) -> None:
        """Close the sandbox's session; again is a no-op."""
        self.connection._run(self._inner.close())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
