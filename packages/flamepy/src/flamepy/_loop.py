"""The one background event loop behind flamepy's synchronous API.

Every sync call is a coroutine submitted to this loop; nothing in flamepy starts a
thread per call, per task or per watch.  The loop thread is a daemon started on
first use and stopped at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from flamepy._errors import FlameTimeoutError, InvalidStateError

T = TypeVar("T")
log = logging.getLogger("flamepy.loop")

LOOP_THREAD_NAME = "flamepy-loop"
SHUTDOWN_TIMEOUT = 5.0
POST_SLICE = 4096
"""Posted callbacks run per loop pass at most, so a flood cannot starve the loop."""


class BackgroundLoop:
    """An asyncio loop running forever in one daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=LOOP_THREAD_NAME, daemon=True)
        self._thread.start()
        self._started.wait()
        self._closers: list[Any] = []
        self._posted: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._post_scheduled = False

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop and return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def post(self, callback: Callable[[T], None], arg: T) -> None:
        """Run ``callback(arg)`` on the loop soon, from any thread.

        Callbacks posted by one thread run in the order they were posted, and a
        burst of them costs one wake-up of the loop, not one each: no task, no
        future and no syscall per callback.  An exception is logged.
        """
        self._posted.append((callback, arg))  # before the flag is read: see _run_posted
        if not self._post_scheduled:
            self._post_scheduled = True
            self.loop.call_soon_threadsafe(self._run_posted)

    def run_posted(self) -> None:
        """Run every callback posted so far, now (on the loop's thread)."""
        while self._posted:
            self._run_posted()

    def _run_posted(self) -> None:
        # Cleared before the queue is read: a callback posted after this sees the
        # flag down and schedules another pass, one posted before is read below.
        self._post_scheduled = False
        posted = self._posted
        for _ in range(min(len(posted), POST_SLICE)):
            callback, arg = posted.popleft()
            try:
                callback(arg)
            except Exception:
                log.exception("a callback posted to flamepy's loop failed")
        if posted and not self._post_scheduled:
            self._post_scheduled = True
            self.loop.call_soon(self._run_posted)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block the calling thread for its result."""
        if self.in_loop_thread:
            coro.close()
            raise InvalidStateError(
                "a synchronous flamepy call was made from flamepy's own event loop; "
                "use the async API (AsyncConnection, AsyncSession) inside coroutines"
            )
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            # On 3.11+ this is the builtin TimeoutError, which the coroutine itself may
            # have raised (FlameTimeoutError is one): only a pending future timed out here.
            if future.done():
                raise
            future.cancel()
            raise FlameTimeoutError(f"operation did not finish within {timeout:g}s") from None
        except KeyboardInterrupt:
            future.cancel()
            raise

    def add_closer(self, closer: Any) -> None:
        """Register an async callable run on the loop before it stops at exit."""
        self._closers.append(closer)

    def stop(self) -> None:
        if not self.loop.is_running():
            return

        async def _shutdown() -> None:
            for closer in reversed(self._closers):
                try:
                    await closer()
                except Exception:  # pragma: no cover - best effort at exit
                    log.debug("closer failed at exit", exc_info=True)
            self._closers.clear()

        if not self.in_loop_thread:
            try:
                self.submit(_shutdown()).result(SHUTDOWN_TIMEOUT)
            except Exception:  # pragma: no cover - best effort at exit
                log.debug("shutdown of the background loop failed", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(SHUTDOWN_TIMEOUT)


_lock = threading.Lock()
_instance: BackgroundLoop | None = None


def background_loop() -> BackgroundLoop:
    """The process-wide loop, started on first use."""
    global _instance
    if _instance is None:
        with _lock:
            if _instance is None:
                _instance = BackgroundLoop()
                atexit.register(_stop_at_exit)
    return _instance


def _stop_at_exit() -> None:
    global _instance
    if _instance is not None:
        _instance.stop()
        _instance = None
