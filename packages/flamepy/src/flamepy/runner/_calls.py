"""The asyncio core of Runner calls.

One call is one coroutine on the event loop: wait for the futures among its
arguments (nested in lists, tuples, dicts and sets too), replace them by their
ObjectRefs (or inline values), move large arguments into the cache, submit the
RunnerRequest as a task, wait for it, and decode the output.  The caller's
thread never blocks on a dependency, and a dependent call occupies no instance
while it waits, so dependencies cannot deadlock even with one slot.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from flamepy._async_client import AsyncSession
from flamepy._cache_codec import decode_opaque
from flamepy._errors import (
    InvalidArgumentError,
    RemoteError,
    RemoteTraceback,
    TaskCancelledError,
    TaskFailedError,
)
from flamepy._types import Task, TaskState
from flamepy.core.cache import ObjectRef, put_object_async
from flamepy.runner._walk import find, replace
from flamepy.runner.types import ERROR_RESULT_MAGIC, INLINE_RESULT_MAGIC, RunnerRequest

log = logging.getLogger("flamepy.runner")

INLINE_RESULT_LIMIT = 256 * 1024
"""Results up to this size come back inline in the task output (when flmrun serves)."""
INLINE_ATTRIBUTE = "flame_inline_limit"
"""Extra RunnerRequest attribute offering inline results; Flame's own runpy ignores it."""
LARGE_ARGUMENT = 1024 * 1024
"""Top-level arguments larger than this travel through the cache as ObjectRefs."""
MAX_TASK_INPUT = 3 * 1024 * 1024
"""The Frontend refuses inputs over 4 MiB; stay well under it."""


@dataclass(frozen=True)
class CallResult:
    """A finished call: an ObjectRef into the cache, or the value itself (inline)."""

    ref: ObjectRef | None
    value: Any = None

    @property
    def inline(self) -> bool:
        return self.ref is None


class Dependency:
    """What a future passed as an argument must offer to the call core."""

    async def _call_result(self) -> CallResult:  # pragma: no cover - interface
        raise NotImplementedError


def _size_hint(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return len(value)
    return 0


async def encode_request(
    method: str | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    cache_prefix: str,
    inline_limit: int = INLINE_RESULT_LIMIT,
) -> bytes:
    """Pickle the request; move large top-level arguments into the cache first."""
    args = tuple([await _maybe_to_cache(a, cache_prefix) for a in args])
    kwargs = {k: await _maybe_to_cache(v, cache_prefix) for k, v in kwargs.items()}
    request = RunnerRequest(method=method, args=args or None, kwargs=kwargs or None)
    setattr(request, INLINE_ATTRIBUTE, inline_limit)
    try:
        data: bytes = cloudpickle.dumps(request, protocol=cloudpickle.DEFAULT_PROTOCOL)
    except Exception as exc:
        raise InvalidArgumentError(
            f"cannot pickle the arguments of {method or 'the call'}: {exc}"
        ) from exc
    if len(data) > MAX_TASK_INPUT:
        # Arguments whose size we could not guess: store every non-trivial one.
        args = tuple([await _maybe_to_cache(a, cache_prefix, force=True) for a in args])
        kwargs = {k: await _maybe_to_cache(v, cache_prefix, force=True) for k, v in kwargs.items()}
        request = RunnerRequest(method=method, args=args or None, kwargs=kwargs or None)
        setattr(request, INLINE_ATTRIBUTE, inline_limit)
        data = cloudpickle.dumps(request, protocol=cloudpickle.DEFAULT_PROTOCOL)
    return data


async def _maybe_to_cache(value: Any, prefix: str, force: bool = False) -> Any:
    if isinstance(value, (ObjectRef, int, float, bool, type(None))):
        return value
    if _size_hint(value) > LARGE_ARGUMENT or (force and _pickled_size(value) > 64 * 1024):
        return await put_object_async(prefix, value)
    return value


def _pickled_size(value: Any) -> int:
    try:
        return len(cloudpickle.dumps(value, protocol=cloudpickle.DEFAULT_PROTOCOL))
    except Exception:
        return 0


def decode_output(output: bytes | None) -> CallResult:
    if output is None:
        raise TaskFailedError("the task succeeded but returned no output (not a Runner task?)")
    if output[:4] == INLINE_RESULT_MAGIC:
        return CallResult(ref=None, value=decode_opaque(memoryview(output)[4:]))
    return CallResult(ref=ObjectRef.decode(output))


def failure_of(task: Task) -> BaseException:
    """The exception a Failed Runner task stands for.

    flmrun stores ``FLME`` + pickle((exception, type name, message, traceback)) as
    the output of a failed task; the original exception is re-raised with the
    remote traceback as its ``__cause__``.  Otherwise (Flame's own runpy, or an
    exception that cannot be unpickled here) a RemoteError or TaskFailedError.
    """
    message = task.failure_message() or "the task failed without an error message"
    output = task.output
    if isinstance(output, bytes) and output[:4] == ERROR_RESULT_MAGIC:
        try:
            exc, type_name, text, remote_tb = pickle.loads(output[4:])
        except Exception:
            log.debug("cannot unpickle a remote exception", exc_info=True)
        else:
            if isinstance(exc, BaseException):
                exc.__cause__ = RemoteTraceback(remote_tb)
                return exc
            return RemoteError(type_name, text, remote_tb)
    return TaskFailedError(message, session_id=task.session_id, task_id=task.id)


async def run_call(
    open_session: Callable[[], Awaitable[AsyncSession]],
    order: Callable[[], Awaitable[Callable[[], None]]] | None,
    method: str | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    cache_prefix: Callable[[AsyncSession], str],
) -> CallResult:
    """Run one call; ``order`` (when given) serialises submission per service."""
    deps = find(kwargs, Dependency, find(args, Dependency))
    release: Callable[[], None] | None = None
    if order is not None:
        release = await order()
    try:
        if deps:
            results = await asyncio.gather(*(d._call_result() for d in deps))
            by_id = {
                id(d): r.value if r.inline else r.ref for d, r in zip(deps, results, strict=True)
            }
            args = replace(args, Dependency, by_id)
            kwargs = replace(kwargs, Dependency, by_id)
        session = await open_session()
        data = await encode_request(method, args, kwargs, cache_prefix=cache_prefix(session))
        task = await session.create_task(data)
    finally:
        if release is not None:
            release()
    final = await session.wait_task(task.id)
    if final.state == TaskState.SUCCEED:
        return decode_output(final.output)
    if final.state == TaskState.CANCELLED:
        raise TaskCancelledError(
            f"call {method or 'of the function'} was cancelled: its session closed first",
            session_id=final.session_id,
            task_id=final.id,
        )
    if final.output is None:
        final = await session.get_task(final.id)
    raise failure_of(final)


class SubmissionOrder:
    """Calls of one service are submitted in the order they were made."""

    def __init__(self) -> None:
        self._tail: asyncio.Future[None] | None = None

    async def __call__(self) -> Callable[[], None]:
        previous = self._tail
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tail = mine

        def release() -> None:
            if not mine.done():
                mine.set_result(None)

        if previous is not None:
            try:
                await asyncio.shield(previous)
            except asyncio.CancelledError:
                # Pass our turn on once the previous call has had its own.
                previous.add_done_callback(lambda _: release())
                raise
        return release
