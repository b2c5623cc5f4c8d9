"""Admission: how one service's calls get from the caller to the batcher's queue.

One owner, in one place, for every step a call takes before it is sent:

1. it is armed with the service's retries and deadline (``_controls``);
2. on an ordered service (a class or an object, whose calls must reach the
   instance in the order they were made), it takes its turn in the
   :class:`SubmissionOrder` at once, in call order, and waits for it;
3. the :class:`~flamepy.runner._batch.Batcher` admits it: it waits for the
   futures among its arguments, then is queued in a batch.

A call made through the sync API comes in by :meth:`Admission.start`, on the
loop, in call order: when nothing is ahead of it and nothing is to be waited for
(the usual case) it is queued at once, with no task and no future of its own.  Any
other call, and an asyncio call (:meth:`Admission.call`), is admitted by a task,
which :meth:`Admission.tasks` lists so that closing can wait for it and an
interrupt can cancel it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from flamepy.runner._batch import Batcher, Call, CallState
from flamepy.runner._calls import CallResult


class SubmissionOrder:
    """Calls of one service are submitted in the order they were made."""

    def __init__(self) -> None:
        self._tail: asyncio.Future[None] | None = None

    def idle(self) -> bool:
        """Whether no call is still waiting for (or holding) its turn."""
        return self._tail is None or self._tail.done()

    def hold(self, until: asyncio.Future[None]) -> None:
        """The next call's turn comes once ``until`` is done (call it when idle)."""
        self._tail = until

    def __call__(self) -> Turn:
        """Take the next turn, now; :meth:`Turn.wait` waits for it to come."""
        previous = self._tail
        turn = Turn(previous, asyncio.get_running_loop().create_future())
        self._tail = turn.mine
        return turn


class Turn:
    """One call's place in a :class:`SubmissionOrder`."""

    __slots__ = ("mine", "previous")

    def __init__(self, previous: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self.previous = previous
        self.mine = mine

    def release(self) -> None:
        """Let the next call have its turn."""
        if not self.mine.done():
            self.mine.set_result(None)

    async def wait(self) -> None:
        previous = self.previous
        if previous is not None:
            try:
                await asyncio.shield(previous)
            except asyncio.CancelledError:
                # Pass our turn on once the previous call has had its own.
                previous.add_done_callback(lambda _: self.release())
                raise


class Admission:
    """Admits the calls of one service (see the module's docstring)."""

    def __init__(
        self,
        batcher: Batcher,
        ordered: bool,
        arm: Callable[[Call], None],
        session_open: Callable[[], bool],
    ) -> None:
        """``arm`` gives a call its retries and deadline; ``session_open`` says whether
        the service's session is open (until then every call is admitted by a task)."""
        self.batcher = batcher
        self.order = SubmissionOrder() if ordered else None
        self._arm = arm
        self._session_open = session_open
        self._tasks: set[asyncio.Task[Any]] = set()

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks admitting calls now."""
        return list(self._tasks)

    def start(self, call: Call) -> None:
        """Admit one call made through the sync API; runs on the loop, in call order."""
        if call.state is not CallState.WAITING:
            return  # cancelled before it came in
        self._arm(call)
        order = self.order
        ready = (order is None or order.idle()) and self._session_open()
        if ready and self.batcher.admit_now(call):
            if order is not None and call.state is CallState.WAITING:
                order.hold(call.entered_future())  # it waits for a call of ours
            return
        turn = order() if order is not None else None  # taken now, in call order
        task = call.task = asyncio.ensure_future(self._admit_later(call, turn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def call(self, call: Call) -> CallResult:
        """Admit and run one call made through the asyncio API; its result."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._arm(call)
        try:
            turn = self.order() if self.order is not None else None
            result = await self._in_turn(call, turn)
            return await result
        except BaseException as exc:
            self.batcher.abandon(call, exc)
            raise
        finally:
            if task is not None:
                self._tasks.discard(task)

    def cancel(self, call: Call) -> bool:
        """Cancel a call that is not in a task yet (waiting for its arguments, or
        queued in a batch not sent); runs on the loop.  Its dependents fail with
        TaskCancelledError too.  A call whose task exists cannot be cancelled: Flame
        has no task cancellation (closing the session cancels its pending tasks)."""
        if call.state is CallState.QUEUED:
            return self.batcher.cancel_queued(call)
        if call.state is not CallState.WAITING:
            return False
        if call.task is not None:
            call.task.cancel()
        self.batcher.abandon(call, asyncio.CancelledError())
        return True

    def cancel_tasks(self) -> None:
        """Cancel every admitting task (an interrupt)."""
        for task in list(self._tasks):
            task.cancel()

    async def _in_turn(self, call: Call, turn: Turn | None) -> asyncio.Future[CallResult]:
        """:meth:`Batcher.admit`, once ``turn`` (if any) has come; the turn passes on
        when it returns."""
        if turn is not None:
            await turn.wait()  # if cancelled, it passes the turn on in time
        try:
            return await self.batcher.admit(call)
        finally:
            if turn is not None:
                turn.release()

    async def _admit_later(self, call: Call, turn: Turn | None) -> None:
        try:
            await self._in_turn(call, turn)
        except BaseException as exc:
            self.batcher.abandon(call, exc)  # the call's own result carries the error
            if not isinstance(exc, Exception):
                raise
        finally:
            call.task = None
