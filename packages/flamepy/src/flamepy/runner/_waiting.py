"""Waiting for Runner calls from any thread, with no object per call.

A call (``_batch.Call``) is finished on flamepy's event loop.  The moment it is
*settled* (its result future holds the outcome), the waiters registered on it are
told.  A waiter serves any number of calls: :func:`wait_calls` blocks a thread
on one :class:`threading.Event` for a whole list, :func:`settled` wakes a
coroutine on any event loop, and :func:`completed` yields calls as they finish.
So 100,000 calls in flight cost no thread, no lock and no future each; only the
calls someone waits on carry a (usually one-item) waiter list.

One module lock orders registration against settling; nothing runs under it
but list operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from flamepy import _progress as progress

_LOCK = threading.Lock()


class Waitable(Protocol):
    """What a call offers to its waiters (``_batch.Call`` implements it)."""

    settled: bool
    waiters: list[Any] | None


class _Waiter:
    """Told once per settled call it was registered on, on the loop's thread."""

    __slots__ = ()

    def registered(self, count: int) -> None:
        """Called under the lock with the number of calls it now waits for."""

    def notify(self, call: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def settle(call: Waitable) -> None:
    """Mark ``call`` settled (its outcome is set) and tell its waiters."""
    with _LOCK:
        call.settled = True
        waiters, call.waiters = call.waiters, None
    if waiters:
        for waiter in waiters:
            waiter.notify(call)


def _register(calls: Iterable[Waitable], waiter: _Waiter) -> list[Waitable]:
    """Register ``waiter`` on each unsettled call; returns those calls."""
    pending = []
    with _LOCK:
        for call in calls:
            if not call.settled:
                if call.waiters is None:
                    call.waiters = [waiter]
                else:
                    call.waiters.append(waiter)
                pending.append(call)
        waiter.registered(len(pending))  # before any notify: settle() needs the lock
    return pending


def _unregister(calls: Iterable[Waitable], waiter: _Waiter) -> None:
    with _LOCK:
        for call in calls:
            waiters = call.waiters
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)


class _EventWaiter(_Waiter):
    __slots__ = ("event", "failed", "first_failure", "left")

    def __init__(self, first_failure: bool) -> None:
        self.event = threading.Event()
        self.left = 0
        self.first_failure = first_failure
        self.failed = False

    def registered(self, count: int) -> None:
        self.left = count

    def notify(self, call: Any) -> None:
        self.left -= 1  # only ever called from the loop's thread
        if self.first_failure and call.result.exception() is not None:
            self.failed = True
            self.event.set()
        elif self.left <= 0:
            self.event.set()


def wait_calls(
    calls: Sequence[Waitable], timeout: float | None, first_failure: bool = False
) -> bool:
    """Block until every call is settled (or, with ``first_failure``, one failed).

    Returns False if ``timeout`` seconds passed first.  Never call it on the loop
    that settles the calls: it would wait for itself.
    """
    if all(c.settled for c in calls):
        return True
    waiter = _EventWaiter(first_failure)
    pending = _register(calls, waiter)
    if not pending:
        return True
    shown = progress.bar(len(calls), "flame calls", "call", minimum=progress.MIN_CALLS)
    if shown is not None:
        with shown:
            return _wait_showing(calls, pending, waiter, timeout, shown)
    if waiter.event.wait(timeout):
        if waiter.failed:
            _unregister(pending, waiter)
        return True
    _unregister(pending, waiter)
    return False


def _wait_showing(
    calls: Sequence[Waitable],
    pending: list[Waitable],
    waiter: _EventWaiter,
    timeout: float | None,
    shown: progress.Bar,
) -> bool:
    """:func:`wait_calls` with a progress bar, redrawn every ``REDRAW`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            _unregister(pending, waiter)
            return False
        done = waiter.event.wait(REDRAW if left is None else min(REDRAW, left))
        shown.set(len(calls) - max(waiter.left, 0))
        if done:
            if waiter.failed:
                _unregister(pending, waiter)
            return True


REDRAW = 0.1
"""Seconds between two redraws of a wait's progress bar."""


class _LoopWaiter(_Waiter):
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self.loop = loop
        self.future = future

    def notify(self, call: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            _resolve(self.future)
        else:
            # A closed loop raises RuntimeError: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def settled(call: Waitable) -> None:
    """Wait, on the running event loop (any loop), until ``call`` is settled."""
    if call.settled:
        return
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    waiter = _LoopWaiter(loop, future)
    pending = _register([call], waiter)
    if not pending:
        return
    try:
        await future
    finally:
        if not future.done() or future.cancelled():
            _unregister(pending, waiter)


class _QueueWaiter(_Waiter):
    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def notify(self, call: Any) -> None:
        self.queue.put(call)


def completed(calls: Sequence[Waitable], timeout: float | None) -> Iterator[Waitable]:
    """Yield ``calls`` as they settle (settled ones first).  Raises
    :class:`TimeoutError` when ``timeout`` seconds pass before the last one."""
    deadline = None if timeout is None else time.monotonic() + timeout
    waiter = _QueueWaiter()
    unique = list({id(c): c for c in calls}.values())
    pending = _register(unique, waiter)
    waiting = {id(c) for c in pending}
    try:
        for call in unique:
            if id(call) not in waiting:
                yield call
        left = len(pending)
        while left:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                call = waiter.queue.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError from None
            left -= 1
            yield call
    finally:
        _unregister(pending, waiter)
