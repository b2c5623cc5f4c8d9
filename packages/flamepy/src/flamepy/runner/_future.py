"""Futures of Runner calls: ``ObjectFuture`` (sync API) and ``AsyncObjectFuture``.

Both wrap one call of :mod:`._calls`.  ``get()`` fetches the value (from the
cache, or the inline copy), ``ref()`` gives the ObjectRef, and either kind can
be passed as an argument to another call, nested in containers too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from flamepy._errors import FlameTimeoutError
from flamepy.core.cache import (
    ObjectRef,
    get_object,
    get_object_async,
    put_object,
    put_object_async,
)
from flamepy.runner._batch import CallState
from flamepy.runner._calls import CallResult, Dependency
from flamepy.runner._waiting import completed, settled, wait_calls


def _timeout_error(timeout: float | None) -> FlameTimeoutError:
    return FlameTimeoutError(f"the call did not finish within {timeout:g}s")


class _Refs:
    """Turns an inline result into an ObjectRef on demand (once)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._ref: ObjectRef | None = None
        self._lock = asyncio.Lock()

    def stored_now(self, result: CallResult) -> ObjectRef:
        """:meth:`ref_of`, blocking (outside the event loop's turn)."""
        if result.ref is not None:
            return result.ref
        if self._ref is None:
            self._ref = put_object(self._prefix, result.value)
        return self._ref

    async def ref_of(self, result: CallResult) -> ObjectRef:
        if result.ref is not None:
            return result.ref
        async with self._lock:
            if self._ref is None:
                self._ref = await put_object_async(self._prefix, result.value)
            return self._ref


class ObjectFuture(Dependency):
    """The result of a remote call made through the synchronous Runner API.

    It is the call's record and nothing more: waiting on it (``get``, ``wait``,
    ``Runner.get`` over many) costs no thread and no per-call future.
    """

    __slots__ = ("__weakref__", "_call", "_loop", "_prefix", "_refs", "_service")

    def __init__(self, call: Any, loop: Any, ref_prefix: str, service: Any = None) -> None:
        self._call = call
        self._loop = loop  # flamepy's BackgroundLoop
        self._prefix = ref_prefix
        self._service = service  # the ServiceCore that cancels it
        self._refs: _Refs | None = None

    def _result(self, timeout: float | None) -> CallResult:
        call = self._call
        if not call.settled and not wait_calls([call], timeout):
            raise _timeout_error(timeout)
        return call.result.result()  # type: ignore[no-any-return]

    def get(self, timeout: float | None = None) -> Any:
        """The call's return value; raises the remote exception if it failed."""
        result = self._result(timeout)
        return result.value if result.inline else get_object(result.ref)  # type: ignore[arg-type]

    def ref(self, timeout: float | None = None) -> ObjectRef:
        """The ObjectRef of the return value (an inline value is stored first)."""
        result = self._result(timeout)
        if result.ref is not None:
            self._call.escaped = True  # the caller keeps the object alive now
            return result.ref
        return self._loop.run(self._ref_of(result))  # type: ignore[no-any-return]

    async def _ref_of(self, result: CallResult) -> ObjectRef:
        if self._refs is None:  # made on the loop: one _Refs even if threads race
            self._refs = _Refs(self._prefix)
        return await self._refs.ref_of(result)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the call finished (successfully or not)."""
        if not wait_calls([self._call], timeout):
            raise _timeout_error(timeout)

    def done(self) -> bool:
        return bool(self._call.settled)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not wait_calls([self._call], timeout):
            raise _timeout_error(timeout)
        return self._call.result.exception()  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        """Cancel a call that is not in a task yet (waiting for its arguments, or
        queued in a batch not sent); it and the calls that depend on it fail with
        TaskCancelledError.  False once its task exists: Flame cannot cancel a task
        (closing the session cancels its pending ones)."""
        if self._call.settled or self._service is None:
            return False
        return self._loop.run(self._cancel())  # type: ignore[no-any-return]

    async def _cancel(self) -> bool:
        self._loop.run_posted()  # the call may not have come in yet
        return self._service.admission.cancel(self._call)  # type: ignore[no-any-return]

    async def _call_result(self) -> CallResult:
        await settled(self._call)
        return self._call.result.result()  # type: ignore[no-any-return]

    def __await__(self) -> Any:
        async def _get() -> Any:
            result = await self._call_result()
            return result.value if result.inline else await get_object_async(result.ref)  # type: ignore[arg-type]

        return _get().__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<ObjectFuture {state}>"


ObjectExpr = ObjectFuture


class ObjectResult(Dependency):
    """A finished call of the asyncio Runner API: what ``await service(...)`` gives.

    It is still the call's result *by reference*: pass it to the next call and only
    its ObjectRef travels, the data stays where it is.  ``get()`` gives the value
    (at once for a small result, which came back inline; a result kept in the cache
    is fetched, blocking, so in a coroutine prefer ``await future.get()`` on the
    future itself, one step to the value), ``ref()`` its ObjectRef.
    """

    __slots__ = ("_call", "_refs", "_result")

    def __init__(self, call: Any, result: CallResult, refs: _Refs) -> None:
        self._call = call
        self._result = result
        self._refs = refs

    def get(self) -> Any:
        result = self._result
        return result.value if result.inline else get_object(result.ref)  # type: ignore[arg-type]

    def ref(self) -> ObjectRef:
        if self._result.ref is not None:
            if self._call is not None:
                self._call.escaped = True  # the caller keeps the object alive now
            return self._result.ref
        return self._refs.stored_now(self._result)

    async def _call_result(self) -> CallResult:
        return self._result

    def __repr__(self) -> str:
        where = "inline" if self._result.inline else "in the cache"
        return f"<ObjectResult {where}>"


class AsyncObjectFuture(Dependency):
    """The result of a remote call made through the asyncio Runner API.

    ``await future`` gives an :class:`ObjectResult` once the call finished (the
    seed's shape: ``res = await svc(1, 2); res.get()``), which can be passed on by
    reference; ``await future.get()`` gives the value in one step.
    """

    def __init__(self, task: asyncio.Future[CallResult], ref_prefix: str, call: Any = None) -> None:
        self._call = call
        self._task = task
        self._refs = _Refs(ref_prefix)

    async def _wait(self, timeout: float | None) -> CallResult:
        try:
            return await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            if self._task.done():
                raise
            raise _timeout_error(timeout) from None

    async def get(self, timeout: float | None = None) -> Any:
        result = await self._wait(timeout)
        return result.value if result.inline else await get_object_async(result.ref)  # type: ignore[arg-type]

    async def ref(self, timeout: float | None = None) -> ObjectRef:
        result = await self._wait(timeout)
        if result.ref is not None and self._call is not None:
            self._call.escaped = True  # the caller keeps the object alive now
        return await self._refs.ref_of(result)

    async def wait(self, timeout: float | None = None) -> None:
        done, _ = await asyncio.wait([self._task], timeout=timeout)
        if not done:
            raise _timeout_error(timeout)

    def done(self) -> bool:
        return self._task.done()

    def exception(self) -> BaseException | None:
        return self._task.exception()

    def cancel(self) -> bool:
        """Cancel the call if it is not in a task yet (see ``ObjectFuture.cancel``)."""
        call = self._call
        if call is not None and call.state is CallState.QUEUED:
            if not call.batcher.cancel_queued(call):
                return False
        elif call is not None and call.state is not CallState.WAITING:
            return False
        return self._task.cancel() or self._task.done()

    async def _call_result(self) -> CallResult:
        return await asyncio.shield(self._task)

    async def result(self, timeout: float | None = None) -> ObjectResult:
        """The finished call, by reference (what ``await future`` gives)."""
        return ObjectResult(self._call, await self._wait(timeout), self._refs)

    def __await__(self) -> Any:
        return self.result().__await__()

    def __repr__(self) -> str:
        return f"<AsyncObjectFuture {'done' if self.done() else 'pending'}>"


def as_completed(
    futures: Iterable[ObjectFuture], timeout: float | None = None
) -> Iterator[ObjectFuture]:
    """Yield the futures in the order their calls finish."""
    by_call = {id(f._call): f for f in futures}
    try:
        for call in completed([f._call for f in by_call.values()], timeout):
            yield by_call[id(call)]
    except TimeoutError:
        raise _timeout_error(timeout) from None


def get_all(futures: Sequence[ObjectFuture], timeout: float | None) -> list[Any]:
    """The values of ``futures``, waited for together, within ``timeout`` seconds in
    all.  As soon as one call failed, the failure of the first failed call (in list
    order) is raised, without waiting for the others."""
    if not wait_calls([f._call for f in futures], timeout, first_failure=True):
        raise _timeout_error(timeout)
    for future in futures:
        call = future._call
        if call.settled and call.result.exception() is not None:
            raise call.result.exception()
    return [future.get(0) for future in futures]


def wait_all(futures: Sequence[ObjectFuture], timeout: float | None) -> None:
    if not wait_calls([f._call for f in futures], timeout):
        raise _timeout_error(timeout)
