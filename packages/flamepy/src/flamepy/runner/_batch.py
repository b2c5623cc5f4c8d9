"""Batched submission: many Runner calls per Flame task, when flmrun serves them.

Each service has one :class:`Batcher`.  A call enters it once its arguments are
ready; calls queue in an *open batch*, and the batch goes out as one task when
the service has fewer than :data:`MAX_PENDING_TASKS` tasks waiting for an
instance.  So a lone call leaves at once (no added latency), while a burst made
faster than instances take tasks rides in a few large tasks: one CreateTask, one
watch and one Instance RPC per batch instead of per call.  The number of tasks
in flight follows the number of instances that take them, so a cluster of many
instances still gets many tasks.

Wire (flame-runner-wire.md §3, extended compatibly): the task input is the first
call's ``RunnerRequest`` with an extra attribute ``flame_batch``, the list of
the further calls' pickled requests.  Flame's own runpy ignores the attribute
and runs the first call only; flmrun runs them all, in order, and answers
``FLMB`` + pickle(list of per-call outputs), each what a single task's output
would be.  Until a reply shows that the executor batches, tasks carry one call.

A call whose argument is the future of a call still in the same open batch is
not held back: the argument becomes a :class:`~flamepy.runner.types.BatchSlot`
that flmrun resolves from the earlier call's result, so a chain of dependent
calls made at once needs one round trip per batch, not per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from flamepy._async_client import AsyncSession
from flamepy._errors import InvalidArgumentError, TaskCancelledError, TaskFailedError
from flamepy._pickle import dumps_as
from flamepy._types import Task, TaskState
from flamepy.core.cache import ObjectRef, delete_objects_async
from flamepy.runner._calls import (
    MAX_TASK_INPUT,
    CallResult,
    Dependency,
    decode_output,
    failure_of,
    failure_of_output,
    needs_staging,
    pickle_request,
    stage_arguments,
    succeeded,
)
from flamepy.runner._waiting import settle
from flamepy.runner._walk import find, replace
from flamepy.runner.types import (
    BATCH_ATTRIBUTE,
    BATCH_RESULT_MAGIC,
    ERROR_RESULT_MAGIC,
    BatchSlot,
    RunnerRequest,
)

log = logging.getLogger("flamepy.runner")

MAX_PENDING_TASKS = 2
"""Tasks of one service that may wait for an instance before calls are held back."""
MAX_BATCH_CALLS = 256
"""Calls per task at most."""
MAX_BATCH_BYTES = 2 * 1024 * 1024
"""Pickled requests per task at most (the Frontend refuses inputs over 4 MiB)."""


class CallState(Enum):
    WAITING = "waiting"  # for its arguments
    QUEUED = "queued"  # in the open batch
    SENT = "sent"  # in a task
    DONE = "done"


class Call:
    """One call of a service, from the moment it is made until its result is known."""

    __slots__ = (
        "args",
        "attempts",
        "batch",
        "batcher",
        "children",
        "data",
        "deps",
        "entered",
        "escaped",
        "forced",
        "index",
        "kwargs",
        "method",
        "plain",
        "request",
        "result",
        "settled",
        "slot_parent",
        "staged",
        "state",
        "task",
        "timer",
        "values",
        "waiters",
    )

    def __init__(
        self, batcher: Batcher, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.batcher = batcher
        self.method = method
        self.args = args
        self.kwargs = kwargs
        # The futures among its arguments (staging never replaces one): None if none.
        self.deps: list[Dependency] | None = (
            find(kwargs, Dependency, find(args, Dependency)) or None
        )
        self.state = CallState.WAITING
        self.values: dict[int, Any] = {}  # id(dependency) -> its ObjectRef or inline value
        self.children: list[Call] | None = None  # calls waiting for it to be queued or done
        self.batch: _Batch | None = None
        self.index = -1
        self.request: RunnerRequest | None = None
        self.data = b""
        self.plain = False  # whether the standard pickle made its request's pickle
        self.forced = False
        self.slot_parent: Call | None = None  # a parent it refers to by BatchSlot
        self.staged: list[ObjectRef] | None = None  # objects made for its arguments
        self.result: asyncio.Future[CallResult] | None = None
        self.entered: asyncio.Future[None] | None = None  # set once queued or done
        self.settled = False  # result is set (see _waiting); read from any thread
        self.waiters: list[Any] | None = None
        self.task: asyncio.Task[None] | None = None  # admitting it, when that must wait
        self.escaped = False  # its result's ObjectRef was handed out: keep the object
        self.attempts = 1  # tasks it was sent in (see _controls: retries)
        self.timer: asyncio.TimerHandle | None = None  # its timeout (see _controls)

    def outcome(self) -> asyncio.Future[CallResult]:
        if self.result is None:
            self.result = asyncio.get_running_loop().create_future()
        return self.result

    def result_ref(self) -> ObjectRef | None:
        """The ObjectRef of a successful result kept in the cache, else None."""
        return self.result.result().ref if succeeded(self.result) else None  # type: ignore[union-attr]

    def __del__(self) -> None:
        # Nobody can reach this call's result any more: its futures are gone, and
        # so are the calls that took it as an argument (they hold those futures
        # until they are done).  Unless its ObjectRef was handed out, the object
        # is garbage; deleting it frees the cache (and, on the local cluster, its
        # file goes to the pool that the next large result is written into).
        try:
            ref = None if self.escaped else self.result_ref()
            if ref is not None:
                self.batcher.drop(ref)
        except Exception:  # pragma: no cover - never raise from a finalizer
            pass

    def entered_future(self) -> asyncio.Future[None]:
        if self.entered is None:
            self.entered = asyncio.get_running_loop().create_future()
            if self.state is not CallState.WAITING:
                self.entered.set_result(None)
        return self.entered

    def wait_behind(self, blocker: Call) -> None:
        """Retry this call once ``blocker`` is queued or done."""
        if blocker.children is None:
            blocker.children = [self]
        else:
            blocker.children.append(self)


class _Batch:
    __slots__ = ("calls", "nbytes")

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.nbytes = 0


def local_call(dep: Dependency, batcher: Batcher) -> Call | None:
    """The call behind ``dep`` when it belongs to ``batcher`` and is not done."""
    call = dep._call
    if isinstance(call, Call) and call.batcher is batcher and call.state is not CallState.DONE:
        return call
    return None


class Batcher:
    """Queues one service's calls into tasks (see the module docstring)."""

    def __init__(
        self,
        open_session: Callable[[], Awaitable[AsyncSession]],
        cache_prefix: Callable[[AsyncSession], str],
        ordered: bool,
    ) -> None:
        self._open_session = open_session
        self._cache_prefix = cache_prefix
        self._ordered = ordered
        self._create_lock = asyncio.Lock() if ordered else None
        self._open = _Batch()
        self._sealed: deque[_Batch] = deque()
        self._pending = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batching: bool | None = None
        """Whether the executor runs batches: None until its first reply says."""
        self.tasks_sent = 0
        self.live: set[Call] = set()
        """Calls admitted and not done yet."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.retry: Callable[[Call, BaseException], bool] | None = None
        """Whether a failed call goes out again (set by ``_controls``)."""

    def new_call(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        return Call(self, method, args, kwargs)

    # -- admission ----------------------------------------------------------------------

    def admit_now(self, call: Call) -> bool:
        """:meth:`admit` without waiting, when nothing needs waiting for: every
        external dependency settled (and succeeded), no argument to stage.  Returns
        False, having changed nothing, when the call must go through :meth:`admit`."""
        external = [d for d in call.deps or () if local_call(d, self) is None]
        for dep in external:
            parent = dep._call
            if not isinstance(parent, Call) or not parent.settled or not succeeded(parent.result):
                return False
        if needs_staging(call.args, call.kwargs):
            return False
        for dep in external:
            call.values[id(dep)] = dep._call.result.result().argument
        call.outcome()
        self.live.add(call)
        self._try_queue(call)
        return True

    async def admit(self, call: Call) -> asyncio.Future[CallResult]:
        """Wait for the call's external dependencies, stage large arguments, and queue
        it (now or, behind a call of this service it depends on, later).  Returns the
        future of its result; for an ordered service it returns once it is queued."""
        result = call.outcome()
        if call.state is CallState.DONE:  # abandoned before it came in
            return result
        self.live.add(call)
        deps = call.deps or ()
        external = [d for d in deps if local_call(d, self) is None]
        if external:
            results = await asyncio.gather(*(d._call_result() for d in external))
            for dep, res in zip(external, results, strict=True):
                call.values[id(dep)] = res.argument
        session = await self._open_session()
        if call.staged is None:
            call.staged = []
        call.args, call.kwargs = await stage_arguments(
            call.args, call.kwargs, self._cache_prefix(session), staged=call.staged
        )
        self._try_queue(call)
        if self._ordered and call.state is CallState.WAITING:
            await call.entered_future()
        return result

    def cancel_queued(self, call: Call, error: BaseException | None = None) -> bool:
        """Take a call out of a batch not sent yet; it fails with ``error``
        (TaskCancelledError by default).

        Not when a call of that batch refers to another by its place in the batch
        (a chain made at once): its place would change."""
        batch = call.batch
        if call.state is not CallState.QUEUED or batch is None:
            return False
        if any(c.slot_parent is not None for c in batch.calls):
            return False
        batch.calls.remove(call)
        batch.nbytes -= len(call.data)
        for i, other in enumerate(batch.calls):
            other.index = i
        if not batch.calls and batch in self._sealed:
            self._sealed.remove(batch)
        error = error or TaskCancelledError("the call was cancelled before it ran")
        self._finish(call, error=error)
        return True

    def interrupt(self, error: BaseException) -> int:
        """Stop: the calls not sent yet are dropped, and every call not answered yet
        fails with ``error`` now (a task already running goes on, its answer is not
        waited for).  Returns how many calls were sent and not answered."""
        self._sealed.clear()
        self._open = _Batch()
        self._pending = MAX_PENDING_TASKS  # nothing more is sent
        sent = sum(1 for call in self.live if call.state is CallState.SENT)
        for call in list(self.live):
            self._finish(call, error=error)
        for task in list(self._tasks):
            task.cancel()
        return sent

    def abandon(self, call: Call, exc: BaseException) -> None:
        """``call`` failed before it was queued (a dependency failed, or the caller
        cancelled it): it will not run, and the calls waiting for it fail alike."""
        if call.state is CallState.WAITING:
            if not isinstance(exc, Exception):
                exc = TaskCancelledError("the call was cancelled before it ran")
            self._finish(call, error=exc)

    def _try_queue(self, *calls: Call) -> None:
        """Queue each call whose local dependencies are queued in the open batch or
        done, then the calls that waited for it, and so on (a work list, no recursion)."""
        work = deque(calls)
        while work:
            call = work.popleft()
            if call.state is not CallState.WAITING:
                continue
            try:
                blocker = self._encode(call)
            except _Failed as failed:
                self._finish(call, error=failed.error, work=work)
                continue
            if blocker is not None:
                call.wait_behind(blocker)
                continue
            if len(call.data) > MAX_TASK_INPUT:
                if call.forced:
                    self._finish(call, error=_too_large(call), work=work)
                else:
                    self._spawn(self._force_stage(call))
                continue
            if call.slot_parent is not None and not self._fits(call):
                call.wait_behind(call.slot_parent)  # retried when that one is done
                continue
            self._append(call)
            if call.children:
                work.extend(call.children)
                call.children = None

    def _encode(self, call: Call) -> Call | None:
        """Pickle ``call`` against the open batch; return the call it must wait for."""
        deps = call.deps or ()
        by_id = dict(call.values)
        call.slot_parent = None
        for dep in deps:
            if id(dep) in call.values:
                continue
            parent = dep._call
            assert isinstance(parent, Call)
            if parent.state is CallState.DONE:
                assert parent.result is not None
                exc = parent.result.exception()
                if exc is not None:
                    raise _Failed(exc)
                call.values[id(dep)] = by_id[id(dep)] = parent.result.result().argument
            elif parent.state is CallState.QUEUED and parent.batch is self._open:
                by_id[id(dep)] = BatchSlot(parent.index)
                call.slot_parent = parent
            else:
                return parent
        args = replace(call.args, Dependency, by_id) if deps else call.args
        kwargs = replace(call.kwargs, Dependency, by_id) if deps else call.kwargs
        try:
            call.request, call.data, call.plain = pickle_request(call.method, args, kwargs)
        except InvalidArgumentError as exc:
            raise _Failed(exc) from exc
        return None

    async def _force_stage(self, call: Call) -> None:
        try:
            session = await self._open_session()
            if call.staged is None:
                call.staged = []
            call.args, call.kwargs = await stage_arguments(
                call.args, call.kwargs, self._cache_prefix(session), force=True, staged=call.staged
            )
        except BaseException as exc:
            self.abandon(call, exc)
            raise
        call.forced = True
        self._try_queue(call)

    def _fits(self, call: Call) -> bool:
        """Whether the open batch can take ``call`` (else it is sealed first)."""
        batch = self._open
        limit = MAX_BATCH_CALLS if self.batching else 1
        if not batch.calls:
            return True
        return len(batch.calls) < limit and batch.nbytes + len(call.data) <= MAX_BATCH_BYTES

    def _append(self, call: Call) -> None:
        if not self._fits(call):
            self._sealed.append(self._open)
            self._open = _Batch()
        batch = self._open
        call.state = CallState.QUEUED
        call.batch = batch
        call.index = len(batch.calls)
        batch.calls.append(call)
        batch.nbytes += len(call.data)
        _enter(call)
        self._schedule_flush()

    # -- sending ------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and (self._sealed or self._open.calls):
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending < MAX_PENDING_TASKS:
            if self._sealed:
                batch = self._sealed.popleft()
            elif self._open.calls:
                batch, self._open = self._open, _Batch()
                # An ordered service runs on one instance: cutting would only add tasks.
                parts = [batch] if self._ordered else _split(batch, MAX_PENDING_TASKS)
                batch = parts[0]
                self._sealed.extendleft(reversed(parts[1:]))
            else:
                return
            self._pending += 1
            for call in batch.calls:
                if call.state is CallState.QUEUED:  # not a call that timed out
                    call.state = CallState.SENT
            self._tasks.add(asyncio.ensure_future(self._send(batch)))  # it removes itself

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: _Batch) -> None:
        calls = batch.calls
        waiting = True

        def started() -> None:
            nonlocal waiting
            if waiting:
                waiting = False
                self._pending -= 1
                self._schedule_flush()

        try:
            session = await self._open_session()
            conn = session.connection
            data = _envelope(calls)
            if self._create_lock is not None:
                async with self._create_lock:
                    task_id = await conn.create_task_id(session.id, data)
            else:
                task_id = await conn.create_task_id(session.id, data)
            self.tasks_sent += 1

            def on_state(state: TaskState) -> None:
                if state != TaskState.PENDING:
                    started()

            final = await conn.follow_task(session.id, task_id, on_state)
            self._deliver(calls, final)
        except BaseException as exc:
            for call in calls:
                self._finish(call, error=exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            started()
            self._tasks.discard(asyncio.current_task())

    def drop(self, ref: ObjectRef) -> None:
        """Delete a result nobody can reach (from any thread, at any time)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self._drop_now, ref)

    def _drop_now(self, ref: ObjectRef) -> None:
        self._spawn(_delete_objects([ref]))

    def _deliver(self, calls: list[Call], task: Task) -> None:
        self._loop = asyncio.get_running_loop()
        output = task.output
        if task.state == TaskState.SUCCEED:
            if isinstance(output, bytes) and output[:4] == BATCH_RESULT_MAGIC:
                if self.batching is None:
                    log.debug("the executor runs batched calls")
                self.batching = True
                outputs = pickle.loads(output[4:])
                if not isinstance(outputs, list) or len(outputs) != len(calls):
                    raise TaskFailedError(
                        f"a batch of {len(calls)} calls came back with a malformed answer",
                        session_id=task.session_id,
                        task_id=task.id,
                    )
                for call, out in zip(calls, outputs, strict=True):
                    if out[:4] == ERROR_RESULT_MAGIC:
                        self._failed(call, failure_of_output(out, task))
                    else:
                        self._finish(call, value=decode_output(out))
                return
            if self.batching is None:
                log.debug("the executor does not run batched calls; one call per task")
            self.batching = False
            if len(calls) != 1:  # only sent once batching was known to work
                raise TaskFailedError("the executor stopped running batched calls")
            self._finish(calls[0], value=decode_output(output))
            return
        if task.state == TaskState.CANCELLED:
            error: BaseException = TaskCancelledError(
                "the call was cancelled: its session closed first",
                session_id=task.session_id,
                task_id=task.id,
            )
        else:
            error = failure_of(task)
        for call in calls:
            self._failed(call, error)

    def _failed(self, call: Call, error: BaseException) -> None:
        """A sent call failed: it goes out again if its service retries it."""
        if call.state is CallState.SENT and self.retry is not None and self.retry(call, error):
            call.attempts += 1
            call.state, call.batch, call.index = CallState.WAITING, None, -1
            self._try_queue(call)
        else:
            self._finish(call, error=error)

    def _finish(
        self,
        call: Call,
        value: CallResult | None = None,
        error: BaseException | None = None,
        work: deque[Call] | None = None,
    ) -> None:
        if call.state is CallState.DONE:
            return
        call.state = CallState.DONE
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        call.request = None
        call.data = b""
        call.args, call.kwargs, call.values, call.batch = (), {}, {}, None
        call.deps = None  # the futures it took: their results may go now
        self.live.discard(call)
        if call.staged:
            self._spawn(_delete_objects(call.staged))
        call.staged = None
        _enter(call)
        result = call.outcome()
        if not result.done():
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(value)  # type: ignore[arg-type]
        settle(call)
        children, call.children = call.children, None
        if not children:
            return
        if work is not None:
            work.extend(children)
        else:
            self._try_queue(*children)


class _Failed(Exception):
    """A call cannot be queued: it fails with ``error``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _too_large(call: Call) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the arguments of {call.method or 'the call'} pickle to {len(call.data)} bytes even "
        f"with large values moved to the cache; the limit is {MAX_TASK_INPUT}: pass big data "
        "as ObjectRefs (Runner.put_object) or in fewer, smaller arguments"
    )


def _split(batch: _Batch, ways: int) -> list[_Batch]:
    """``batch`` cut into ``ways`` parts of nearly equal size, so that a burst taken
    at once reaches more than one instance: the parts leave as task slots free up,
    and an instance that finishes early takes the next part instead of finding the
    whole burst queued behind another.  A batch whose calls refer to each other
    (BatchSlots) stays whole."""
    calls = batch.calls
    if ways < 2 or len(calls) < 2 or any(c.slot_parent is not None for c in calls):
        return [batch]
    size = -(-len(calls) // ways)
    parts = []
    for start in range(0, len(calls), size):
        part = _Batch()
        for call in calls[start : start + size]:
            call.batch, call.index = part, len(part.calls)
            part.calls.append(call)
            part.nbytes += len(call.data)
        parts.append(part)
    return parts


async def _delete_objects(refs: list[ObjectRef]) -> None:
    """Delete objects only one call used: the ones its arguments were staged in
    (once it is done), or its result (once nobody can reach it).  A long-running
    Runner must not keep every one."""
    for ref in refs:
        try:
            await delete_objects_async(ref.key)
        except Exception as exc:  # the Runner's cleanup at exit deletes it anyway
            log.debug("cannot delete the object %s: %s", ref.key, exc)


def _enter(call: Call) -> None:
    if call.entered is not None and not call.entered.done():
        call.entered.set_result(None)


def _envelope(calls: list[Call]) -> bytes:
    head = calls[0]
    if head.request is None:
        raise InvalidArgumentError("a queued call lost its request")
    request = head.request
    setattr(request, BATCH_ATTRIBUTE, [c.data for c in calls[1:]])
    try:
        return dumps_as(request, head.plain)  # a list of bytes added: still as plain
    finally:
        delattr(request, BATCH_ATTRIBUTE)
