"""The asyncio core of Runner calls.

What every call needs, whichever way it is submitted (``_batch`` queues them):
moving large arguments into the cache, pickling a RunnerRequest, decoding an
output (a BSON ObjectRef, an inline value, or a pickled remote exception), and
keeping the calls of an ordered service in the order they were made.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from dataclasses import dataclass
from typing import Any

from flamepy._cache.codec import MAGIC_PICKLE, decode_opaque, unpickle
from flamepy._errors import (
    InvalidArgumentError,
    RemoteError,
    RemoteTraceback,
    TaskFailedError,
)
from flamepy._pickle import dumps, dumps_as, is_plain
from flamepy._types import Task
from flamepy.core.cache import ObjectRef, put_object_async
from flamepy.runner.types import (
    CLIENT_PYTHON,
    ERROR_RESULT_MAGIC,
    INLINE_ATTRIBUTE,
    INLINE_RESULT_MAGIC,
    PYTHON_ATTRIBUTE,
    REBUILD_EXCEPTION,
    RunnerRequest,
)

log = logging.getLogger("flamepy.runner")

INLINE_RESULT_LIMIT = 256 * 1024
"""Results up to this size come back inline in the task output (when flmrun serves)."""
LARGE_ARGUMENT = 1024 * 1024
"""Top-level arguments larger than this travel through the cache as ObjectRefs."""
MAX_TASK_INPUT = 3 * 1024 * 1024
"""The Frontend refuses inputs over 4 MiB; stay well under it."""


@dataclass(frozen=True, slots=True)
class CallResult:
    """A finished call: an ObjectRef into the cache, or the value itself (inline)."""

    ref: ObjectRef | None
    value: Any = None

    @property
    def inline(self) -> bool:
        return self.ref is None

    @property
    def argument(self) -> Any:
        """What a call that took this result as an argument is sent: the value
        itself when inline, else its ObjectRef."""
        return self.value if self.ref is None else self.ref


def succeeded(future: asyncio.Future[Any] | None) -> bool:
    """Whether ``future`` exists, is done, and holds a result (not an error)."""
    return (
        future is not None
        and future.done()
        and not future.cancelled()
        and future.exception() is None
    )


class Dependency:
    """What a future passed as an argument must offer to the call core."""

    __slots__ = ()
    _call: Any = None
    """The batcher's record of the call behind this future (see ``_batch``)."""

    async def _call_result(self) -> CallResult:  # pragma: no cover - interface
        raise NotImplementedError


def size_hint(value: Any) -> int:
    """A cheap guess of a value's size in bytes: buffers and arrays only, else 0."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return len(value)
    return 0


async def stage_arguments(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    cache_prefix: str,
    force: bool = False,
    staged: list[ObjectRef] | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Move large top-level arguments into the cache; they travel as ObjectRefs.

    ``force`` (used when the pickled request is still too big) also moves every
    argument that pickles to more than 64 KiB, whatever its type.  The refs of
    the objects it made are appended to ``staged``: nobody else knows them, so
    the caller deletes them once the call is done.
    """
    made = staged if staged is not None else []

    async def stage(value: Any) -> Any:
        moved = await _maybe_to_cache(value, cache_prefix, force)
        if moved is not value and isinstance(moved, ObjectRef):
            made.append(moved)
        return moved

    new_args = tuple([await stage(a) for a in args])
    return new_args, {k: await stage(v) for k, v in kwargs.items()}


def pickle_request(
    method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[RunnerRequest, bytes, bool]:
    """One call's RunnerRequest (offering inline results), its pickle, and whether
    the standard pickle made it (see ``flamepy._pickle``)."""
    request = RunnerRequest(method=method, args=args or None, kwargs=kwargs or None)
    setattr(request, INLINE_ATTRIBUTE, INLINE_RESULT_LIMIT)
    setattr(request, PYTHON_ATTRIBUTE, CLIENT_PYTHON)
    try:
        plain = is_plain(request)
        return request, dumps_as(request, plain), plain
    except Exception as exc:
        raise InvalidArgumentError(
            f"cannot pickle the arguments of {method or 'the call'}: {exc}"
        ) from exc


_NEVER_STAGED = (ObjectRef, Dependency, int, float, bool, type(None))


def _large(value: Any) -> bool:
    """Whether an unforced staging moves ``value`` into the cache."""
    return not isinstance(value, _NEVER_STAGED) and size_hint(value) > LARGE_ARGUMENT


def needs_staging(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether :func:`stage_arguments` (not forced) would move any argument."""
    return any(map(_large, args)) or any(map(_large, kwargs.values()))


async def _maybe_to_cache(value: Any, prefix: str, force: bool = False) -> Any:
    if isinstance(value, _NEVER_STAGED):
        return value
    if _large(value) or (force and _pickled_size(value) > 64 * 1024):
        return await put_object_async(prefix, value)
    return value


def _pickled_size(value: Any) -> int:
    try:
        return len(dumps(value))
    except Exception:
        return 0


def decode_output(output: bytes | None) -> CallResult:
    if output is None:
        raise TaskFailedError("the task succeeded but returned no output (not a Runner task?)")
    if output[:4] == INLINE_RESULT_MAGIC:
        if output[4:8] == MAGIC_PICKLE:  # the common case: no Arrow buffers needed
            return CallResult(ref=None, value=unpickle(memoryview(output)[8:]))
        return CallResult(ref=None, value=decode_opaque(memoryview(output)[4:]))
    return CallResult(ref=ObjectRef.decode(output))


def failure_of(task: Task) -> BaseException:
    """The exception a Failed Runner task stands for.

    flmrun stores ``FLME`` + pickle((exception, type name, message, traceback)) as
    the output of a failed task; the original exception is re-raised with the
    remote traceback as its ``__cause__``.  Otherwise (Flame's own runpy, or an
    exception that cannot be unpickled here) a RemoteError or TaskFailedError.
    """
    output = task.output
    if isinstance(output, bytes) and output[:4] == ERROR_RESULT_MAGIC:
        return failure_of_output(output, task)
    message = task.failure_message() or "the task failed without an error message"
    return TaskFailedError(message, session_id=task.session_id, task_id=task.id)


def failure_of_output(output: bytes, task: Task) -> BaseException:
    """The exception in one ``FLME`` output (a failed task's, or one call's of a batch)."""
    try:
        exc, type_name, text, remote_tb = pickle.loads(output[4:])
    except Exception:
        log.debug("cannot unpickle a remote exception", exc_info=True)
        message = task.failure_message() or "the call failed and its error could not be read"
        return TaskFailedError(message, session_id=task.session_id, task_id=task.id)
    if isinstance(exc, tuple) and len(exc) == 4 and exc[0] == REBUILD_EXCEPTION:
        exc = _rebuild(exc[1], exc[2], exc[3])
    error: BaseException = (
        exc if isinstance(exc, BaseException) else RemoteError(type_name, text, remote_tb)
    )
    error.__cause__ = RemoteTraceback(remote_tb)  # the remote traceback, always shown
    return error


def _rebuild(kind: Any, args: Any, state: Any) -> BaseException | None:
    """An exception of ``kind`` with ``args`` and attributes ``state``, made without
    calling its constructor (which may want other arguments); None if it cannot be."""
    try:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            return None
        exc = kind.__new__(kind)
        exc.args = tuple(args)
        if isinstance(state, dict):
            exc.__dict__.update(state)
        return exc
    except Exception:
        log.debug("cannot rebuild a remote %r", kind, exc_info=True)
        return None
