"""``Runner.map`` and ``AsyncRunner.map``: ordered results, a bounded window of calls.

Like ``concurrent.futures.Executor.map`` (results in the order of the inputs, a
failing call raises its exception when its result is reached) and
``multiprocessing.Pool.imap`` (the input is drawn lazily): at most
``max_in_flight`` calls are made and not yet taken at any time.  The first
``max_in_flight`` calls are made at once; each result taken makes room for the
next item.  When a call fails, or the iterator is closed early, the calls still
in the window are cancelled where they can be (those not sent to the cluster
yet; one already sent runs to its end and its result is ignored).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from flamepy._errors import InvalidArgumentError
from flamepy.runner._future import AsyncObjectFuture, ObjectFuture

DEFAULT_MAX_IN_FLIGHT = 512
"""Calls of one ``map`` made and not yet taken, at most, unless ``max_in_flight`` says."""


def check_bound(max_in_flight: int) -> int:
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise InvalidArgumentError(
            f"max_in_flight must be a whole number >= 1, not {max_in_flight!r}"
        )
    return max_in_flight


class _Window:
    """What both flavours share: the input and the futures not taken yet."""

    def __init__(self, submit: Callable[..., Any], items: Iterator[tuple[Any, ...]], bound: int):
        self._submit = submit
        self._items: Iterator[tuple[Any, ...]] | None = items
        self._bound = bound
        self._window: deque[Any] = deque()

    def _fill(self) -> None:
        """Make calls until the window is full or the input is exhausted."""
        while self._items is not None and len(self._window) < self._bound:
            try:
                args = next(self._items)
            except StopIteration:
                self._items = None
                return
            except BaseException:
                self._stop()
                raise
            try:
                self._window.append(self._submit(*args))
            except BaseException:
                self._stop()
                raise

    def _stop(self) -> None:
        """No further call: the ones in the window are cancelled where they can be."""
        self._items = None
        window, self._window = self._window, deque()
        for future in window:
            future.cancel()


class MapIterator(_Window, Iterator[Any]):
    """The values of a :meth:`Runner.map`, in input order."""

    def __init__(
        self,
        submit: Callable[..., ObjectFuture],
        items: Iterator[tuple[Any, ...]],
        bound: int,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(submit, items, bound)
        self._on_done = on_done
        self._fill()

    def __iter__(self) -> MapIterator:
        return self

    def __next__(self) -> Any:
        if not self._window:
            self._done()
            raise StopIteration
        head: ObjectFuture = self._window.popleft()
        try:
            value = head.get()
        except BaseException:
            self._stop()
            raise
        self._fill()
        return value

    def _done(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()

    def close(self) -> None:
        """Stop early: the calls not taken are cancelled where they can be."""
        self._stop()


class AsyncMapIterator(_Window, AsyncIterator[Any]):
    """The values of an :meth:`AsyncRunner.map`, in input order."""

    def __init__(
        self,
        submit: Callable[..., AsyncObjectFuture],
        items: Iterator[tuple[Any, ...]],
        bound: int,
        on_done: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(submit, items, bound)
        self._on_done = on_done
        self._fill()

    def __aiter__(self) -> AsyncMapIterator:
        return self

    async def __anext__(self) -> Any:
        if not self._window:
            on_done, self._on_done = self._on_done, None
            if on_done is not None:
                await on_done()
            raise StopAsyncIteration
        head: AsyncObjectFuture = self._window.popleft()
        try:
            value = await head.get()
        except BaseException:
            self._stop()
            raise
        self._fill()
        return value

    async def aclose(self) -> None:
        """Stop early: the calls not taken are cancelled where they can be."""
        self._stop()
