"""The three Instance calls, one at a time, whichever transport brings them.

:class:`InstanceCore` runs ``OnSessionEnter``, ``OnTaskInvoke`` and ``OnSessionLeave``
against the service.  Its methods are called from a thread other than the event
loop's and block until the hook returns: the gRPC servicer calls them on the worker
thread, the task stream (``flmrun._stream``) on its own connection thread.  A lock
makes the calls run one at a time whichever transport they came by.  Plain hooks run
in the calling thread; coroutine hooks are handed to the event loop and awaited
there.

Failures are reported through ``return_code = -1`` and ``message``, never raised:
the message is ``"<ExcType>: <str(exc)>\\n<formatted traceback>"``.
``OnSessionLeave`` always answers ``return_code = 0``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import queue
import threading
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

from flamepy.proto import shim_pb2, types_pb2
from flmrun._errors import InstallError, PythonVersionError, TaskFailure
from flmrun._service import ApplicationContext, FlameService, SessionContext, TaskContext

logger = logging.getLogger("flmrun.server")

EXECUTOR_DECODE_LIMIT = 4 * 1024 * 1024
"""The executor manager's default inbound message limit (see flame-wire.md §0)."""

_T = TypeVar("_T")


def format_error(exc: BaseException) -> str:
    """The failure text reported to Flame: ``"<ExcType>: <str(exc)>\\n<traceback>"``.

    The traceback is :func:`traceback.format_exception`'s text, including chained
    exceptions, with the leading frames of flmrun's plumbing left out so that it
    starts at the service's own code.  flmrun's own verdicts (a Python version
    mismatch, a failed install) are reported without a traceback.
    """
    head = f"{type(exc).__qualname__}: {exc}"
    if isinstance(exc, (PythonVersionError, InstallError)):
        return head  # flmrun's own verdict, complete: its frames would only be noise
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _PLUMBING:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb or exc.__traceback__)
    return f"{head}\n" + "".join(lines).rstrip("\n")


_PLUMBING = {__file__, concurrent.futures._base.__file__, asyncio.tasks.__file__}
"""Where the frames of flmrun's own plumbing come from: the calls, and the hand-over of
a coroutine hook's exception from the event loop to the calling thread."""
MESSAGE_LIMIT = 64 * 1024
"""Characters of a failure text kept in a TaskResult (its head and its tail), so that
a huge exception message cannot push the reply over the 4 MiB limit."""


def _bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - limit} characters cut) ...\n{text[-half:]}"


class _Worker:
    """One daemon thread that runs the gRPC transport's calls in turn.

    The calls run one at a time anyway (the core holds a lock), so one long-lived
    thread serves them all instead of a thread per call.  It is a daemon: a hook
    that never returns does not keep the process alive after the server stopped.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="flmrun-worker", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            self._jobs.get()()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)


_worker: _Worker | None = None


async def in_worker_thread(func: Callable[[], _T]) -> _T:
    """Run ``func`` on the worker thread and await its result."""
    global _worker
    if _worker is None:
        _worker = _Worker()
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()
    ctx = contextvars.copy_context()

    def deliver_result(value: _T) -> None:
        if not future.done():
            future.set_result(value)

    def deliver_error(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    def job() -> None:
        # RuntimeError from call_soon_threadsafe: the loop is closed, nobody waits any more.
        try:
            value = ctx.run(func)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver_error, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver_result, value)

    _worker.submit(job)
    return await future


def session_context(request: shim_pb2.SessionContext) -> SessionContext:
    app = request.application

    def opt(field: str) -> str | None:
        return cast(str, getattr(app, field)) if app.HasField(field) else None

    return SessionContext(
        _common_data=request.common_data if request.HasField("common_data") else None,
        session_id=request.session_id,
        application=ApplicationContext(
            name=app.name,
            shim=int(app.shim),
            image=opt("image"),
            command=opt("command"),
            working_directory=opt("working_directory"),
            url=opt("url"),
            installer=opt("installer"),
        ),
    )


def task_context(request: shim_pb2.TaskContext) -> TaskContext:
    return TaskContext(
        task_id=request.task_id,
        session_id=request.session_id,
        input=request.input if request.HasField("input") else None,
    )


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


class InstanceCore:
    """The service behind an instance, and the three calls on it (see the module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._service: concurrent.futures.Future[FlameService] = concurrent.futures.Future()
        self._serial = threading.Lock()
        self.entered = False
        self.left = False

    # -- service provisioning (on the loop)

    def set_service(self, service: FlameService) -> None:
        self._service.set_result(service)

    def set_service_error(self, exc: Exception) -> None:
        self._service.set_exception(exc)

    def cancel_service(self) -> None:
        self._service.cancel()

    @property
    def service(self) -> FlameService | None:
        """The service, if it has been built successfully."""
        fut = self._service
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return fut.result()
        return None

    # -- calls (from a thread that is not the loop's; each blocks until done)

    def _hook(self, method: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(method):
            return asyncio.run_coroutine_threadsafe(method(*args), self._loop).result()
        result = method(*args)
        if inspect.isawaitable(result):  # a plain def that returned an awaitable
            return asyncio.run_coroutine_threadsafe(_awaited(result), self._loop).result()
        return result

    def enter(self, request: shim_pb2.SessionContext) -> types_pb2.Result:
        with self._serial:
            self.entered = True
            try:
                ctx = session_context(request)
                logger.info(
                    "entering session %s (application %s)", ctx.session_id, ctx.application.name
                )
                self._hook(self._service.result().on_session_enter, ctx)
            except BaseException as exc:
                logger.exception("on_session_enter failed for session %s", request.session_id)
                return types_pb2.Result(return_code=-1, message=format_error(exc))
            return types_pb2.Result(return_code=0)

    def invoke(self, request: shim_pb2.TaskContext) -> types_pb2.TaskResult:
        with self._serial:
            ctx = task_context(request)
            logger.debug("invoking task %s of session %s", ctx.task_id, ctx.session_id)
            try:
                output = self._hook(self._service.result().on_task_invoke, ctx)
            except TaskFailure as failure:
                logger.info("task %s failed: %r", ctx.task_id, failure.cause)
                return types_pb2.TaskResult(
                    return_code=-1,
                    message=_bounded(format_error(failure.cause)),
                    output=failure.output,
                )
            except BaseException as exc:
                logger.info("task %s of session %s failed: %r", ctx.task_id, ctx.session_id, exc)
                return types_pb2.TaskResult(return_code=-1, message=_bounded(format_error(exc)))
            return _task_result(ctx, output)

    def leave(self, reason: str = "OnSessionLeave") -> types_pb2.Result:
        """Call the service's ``on_session_leave`` once; log, never raise, its failures."""
        with self._serial:
            if self.left:
                logger.debug("%s: session already left", reason)
                return types_pb2.Result(return_code=0)
            self.left = True
            try:
                service = self._service.result()
            except BaseException:
                logger.info("%s: no service to leave (it failed to load)", reason)
                return types_pb2.Result(return_code=0)
            try:
                self._hook(service.on_session_leave)
            except BaseException:
                logger.exception("%s: on_session_leave failed (reported as success)", reason)
            else:
                logger.info("%s: session left", reason)
            return types_pb2.Result(return_code=0)


def _task_result(ctx: TaskContext, output: object) -> types_pb2.TaskResult:
    if output is None:
        return types_pb2.TaskResult(return_code=0)
    if not isinstance(output, bytes):
        kind = type(output)
        type_name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        message = f"TypeError: on_task_invoke must return bytes or None, not {type_name}"
        logger.error("task %s: %s", ctx.task_id, message)
        return types_pb2.TaskResult(return_code=-1, message=message)
    if len(output) > EXECUTOR_DECODE_LIMIT:
        logger.warning(
            "task %s output is %d bytes; executors reject replies above %d bytes",
            ctx.task_id,
            len(output),
            EXECUTOR_DECODE_LIMIT,
        )
    return types_pb2.TaskResult(return_code=0, output=output)


class InstanceServicer:
    """The ``flame.v1.Instance`` gRPC servicer: each RPC runs on the worker thread."""

    def __init__(self, core: InstanceCore) -> None:
        self.core = core

    async def OnSessionEnter(
        self, request: shim_pb2.SessionContext, context: grpc.aio.ServicerContext
    ) -> types_pb2.Result:
        return await in_worker_thread(functools.partial(self.core.enter, request))

    async def OnTaskInvoke(
        self, request: shim_pb2.TaskContext, context: grpc.aio.ServicerContext
    ) -> types_pb2.TaskResult:
        return await in_worker_thread(functools.partial(self.core.invoke, request))

    async def OnSessionLeave(
        self, request: types_pb2.EmptyRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.Result:
        return await in_worker_thread(self.core.leave)
