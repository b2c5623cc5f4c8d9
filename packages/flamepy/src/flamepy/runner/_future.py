"""Futures of Runner calls: ``ObjectFuture`` (sync API) and ``AsyncObjectFuture``.

Both wrap one call of :mod:`._calls`.  ``get()`` fetches the value (from the
cache, or the inline copy), ``ref()`` gives the ObjectRef, and either kind can
be passed as an argument to another call, nested in containers too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterable, Iterator
from typing import Any

from flamepy._errors import FlameTimeoutError
from flamepy.core.cache import ObjectRef, get_object, get_object_async, put_object_async
from flamepy.runner._calls import CallResult, Dependency


def _timeout_error(timeout: float | None) -> FlameTimeoutError:
    return FlameTimeoutError(f"the call did not finish within {timeout:g}s")


class _Refs:
    """Turns an inline result into an ObjectRef on demand (once)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._ref: ObjectRef | None = None
        self._lock = asyncio.Lock()

    async def ref_of(self, result: CallResult) -> ObjectRef:
        if result.ref is not None:
            return result.ref
        async with self._lock:
            if self._ref is None:
                self._ref = await put_object_async(self._prefix, result.value)
            return self._ref


class ObjectFuture(Dependency):
    """The result of a remote call made through the synchronous Runner API."""

    def __init__(
        self,
        future: concurrent.futures.Future[CallResult],
        loop: Any,
        ref_prefix: str,
        call: Any = None,
    ) -> None:
        self._call = call
        self._future = future
        self._loop = loop  # flamepy's BackgroundLoop
        self._refs = _Refs(ref_prefix)

    def _result(self, timeout: float | None) -> CallResult:
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            if self._future.done():
                raise
            raise _timeout_error(timeout) from None

    def get(self, timeout: float | None = None) -> Any:
        """The call's return value; raises the remote exception if it failed."""
        result = self._result(timeout)
        return result.value if result.inline else get_object(result.ref)  # type: ignore[arg-type]

    def ref(self, timeout: float | None = None) -> ObjectRef:
        """The ObjectRef of the return value (an inline value is stored first)."""
        result = self._result(timeout)
        if result.ref is not None:
            return result.ref
        return self._loop.run(self._refs.ref_of(result))  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None) -> None:
        """Block until the call finished (successfully or not)."""
        done, _ = concurrent.futures.wait([self._future], timeout)
        if not done:
            raise _timeout_error(timeout)

    def done(self) -> bool:
        return self._future.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._future.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise _timeout_error(timeout) from None

    def cancel(self) -> bool:
        """Cancel a call that is not submitted yet (one waiting for its arguments)."""
        return self._future.cancel()

    async def _call_result(self) -> CallResult:
        return await asyncio.wrap_future(self._future)

    def __await__(self) -> Any:
        async def _get() -> Any:
            result = await asyncio.wrap_future(self._future)
            return result.value if result.inline else await get_object_async(result.ref)  # type: ignore[arg-type]

        return _get().__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<ObjectFuture {state}>"


ObjectExpr = ObjectFuture


class AsyncObjectFuture(Dependency):
    """The result of a remote call made through the asyncio Runner API.

    ``await future`` (or ``await future.get()``) gives the value.
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
        return await self._refs.ref_of(await self._wait(timeout))

    async def wait(self, timeout: float | None = None) -> None:
        done, _ = await asyncio.wait([self._task], timeout=timeout)
        if not done:
            raise _timeout_error(timeout)

    def done(self) -> bool:
        return self._task.done()

    def exception(self) -> BaseException | None:
        return self._task.exception()

    def cancel(self) -> bool:
        return self._task.cancel()

    async def _call_result(self) -> CallResult:
        return await asyncio.shield(self._task)

    def __await__(self) -> Any:
        return self.get().__await__()

    def __repr__(self) -> str:
        return f"<AsyncObjectFuture {'done' if self.done() else 'pending'}>"


def as_completed(
    futures: Iterable[ObjectFuture], timeout: float | None = None
) -> Iterator[ObjectFuture]:
    """Yield the futures in the order their calls finish."""
    by_inner = {id(f._future): f for f in futures}
    inner = [f._future for f in by_inner.values()]
    try:
        for done in concurrent.futures.as_completed(inner, timeout):
            yield by_inner[id(done)]
    except concurrent.futures.TimeoutError:
        raise _timeout_error(timeout) from None
