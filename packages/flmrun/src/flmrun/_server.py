"""The asyncio gRPC server of the ``flame.v1.Instance`` service.

An executor manager launches one instance process per binding with
``FLAME_INSTANCE_ENDPOINT`` set to the absolute path of a Unix socket, waits (forever) for
that socket file to appear, connects, and calls ``OnSessionEnter``, then ``OnTaskInvoke``
once per task, one at a time, then ``OnSessionLeave``; finally it sends SIGTERM to the
process group. :func:`serve` implements the instance side of that contract:

* The socket is bound before the service is built, so that a factory doing heavy imports
  cannot leave the executor waiting. RPCs that arrive while the factory runs wait for it.
  If the factory fails, the process keeps serving and reports the failure through
  ``OnSessionEnter`` and ``OnTaskInvoke`` (so the client sees it as a bind failure), while
  ``OnSessionLeave`` still succeeds.
* Failures are reported through ``return_code = -1`` and ``message``, never as gRPC
  errors. The message is ``"<ExcType>: <str(exc)>\\n<formatted traceback>"``.
* ``OnSessionLeave`` always answers ``return_code = 0``: anything else makes the executor
  retry the unbind step forever.
* Plain service methods run in a worker thread; coroutine methods run on the loop. The
  worker threads are daemon threads, so a task that never returns cannot keep the process
  alive after SIGTERM.
* On SIGTERM or SIGINT the server stops (in-flight calls get up to 5 s), the service's
  ``on_session_leave`` runs if the session was entered but not left, the socket file is
  removed, and :func:`serve` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import queue
import signal
import stat
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar, cast

import grpc

from flamepy.proto import shim_pb2, shim_pb2_grpc, types_pb2
from flmrun._errors import InstanceConfigError, ServiceLoadError, TaskFailure
from flmrun._service import ApplicationContext, FlameService, SessionContext, TaskContext

__all__ = ["ENDPOINT_ENV", "configure_logging", "format_error", "run", "serve"]

logger = logging.getLogger("flmrun.server")

ENDPOINT_ENV = "FLAME_INSTANCE_ENDPOINT"
"""The environment variable holding the instance's Unix socket path."""

LOG_ENV = "FLAME_LOG"
"""The environment variable holding the log level (RUST_LOG syntax)."""

SHUTDOWN_GRACE_SECONDS = 5.0
"""How long in-flight RPCs may run on after SIGTERM/SIGINT."""

LEAVE_ON_SHUTDOWN_TIMEOUT_SECONDS = 5.0
"""How long ``on_session_leave`` may take when it is called during shutdown."""

_MAX_SOCKET_PATH_BYTES = 107
"""``sizeof(sockaddr_un.sun_path) - 1`` on Linux."""

_EXECUTOR_DECODE_LIMIT = 4 * 1024 * 1024
"""The executor manager's default inbound message limit (see flame-wire.md §0)."""

ServiceSpec: TypeAlias = "FlameService | Callable[[], FlameService]"
"""A service instance, or a zero-argument callable (such as the class) that builds one."""

_T = TypeVar("_T")


# --------------------------------------------------------------------------- helpers


def format_error(exc: BaseException) -> str:
    """The failure text reported to Flame: ``"<ExcType>: <str(exc)>\\n<traceback>"``.

    The traceback is :func:`traceback.format_exception`'s text, including chained
    exceptions, with the leading frames of this module (the RPC plumbing) left out so that
    it starts at the service's own code.
    """
    head = f"{type(exc).__qualname__}: {exc}"
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb or exc.__traceback__)
    return f"{head}\n" + "".join(lines).rstrip("\n")


def _resolve_endpoint(endpoint: str | None) -> str:
    """Return the socket path to bind, from ``endpoint`` or the environment."""
    if endpoint is None:
        endpoint = os.environ.get(ENDPOINT_ENV)
        source = f"environment variable {ENDPOINT_ENV}"
        if not endpoint:
            raise InstanceConfigError(
                f"{ENDPOINT_ENV} is not set: the executor manager must set it to the absolute "
                "path of the Unix socket this instance serves"
            )
    else:
        source = "endpoint argument"
    if not os.path.isabs(endpoint):
        raise InstanceConfigError(
            f"{source} is {endpoint!r}, which is not an absolute filesystem path "
            "(it must be a plain path such as /var/flame/executors/<id>.sock, not a URI)"
        )
    if len(os.fsencode(endpoint)) > _MAX_SOCKET_PATH_BYTES:
        raise InstanceConfigError(
            f"{source} is {endpoint!r}, which is longer than the "
            f"{_MAX_SOCKET_PATH_BYTES} bytes a Unix socket path may have"
        )
    return endpoint


def _remove_stale_socket(path: str) -> None:
    """Delete a leftover socket file at ``path``; refuse to delete anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InstanceConfigError(f"{path!r} exists and is not a socket; refusing to replace it")
    logger.info("removing stale socket file %s", path)
    os.unlink(path)


def _remove_own_socket(path: str, inode: int | None) -> None:
    """Delete the socket file at ``path`` if it is still the one this process bound."""
    try:
        st = os.lstat(path)
        if inode is None or st.st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove socket file %s: %s", path, exc)


class _Worker:
    """One daemon thread that runs the service's plain (non-async) hooks in turn.

    Hooks run one at a time anyway (the servicer holds a lock), so one long-lived
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


async def _in_worker_thread(func: Callable[[], _T]) -> _T:
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


async def _call_hook(method: Callable[..., Any], *args: Any) -> Any:
    """Call a service hook: coroutine functions on the loop, plain ones in a thread."""
    if inspect.iscoroutinefunction(method):
        return await method(*args)
    result = await _in_worker_thread(lambda: method(*args))
    if inspect.isawaitable(result):  # a plain def that returned an awaitable
        return await result
    return result


def _session_context(request: shim_pb2.SessionContext) -> SessionContext:
    app = request.application

    def opt(field: str) -> str | None:
        return cast(str, getattr(app, field)) if app.HasField(field) else None

    return SessionContext(
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
        common_data=request.common_data if request.HasField("common_data") else None,
    )


def _task_context(request: shim_pb2.TaskContext) -> TaskContext:
    return TaskContext(
        task_id=request.task_id,
        session_id=request.session_id,
        input=request.input if request.HasField("input") else None,
    )


# --------------------------------------------------------------------------- servicer


class _InstanceServicer:
    """Implements the three Instance RPCs on top of a (possibly not yet built) service."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._service: asyncio.Future[FlameService] = loop.create_future()
        self._lock = asyncio.Lock()
        self.entered = False
        self.left = False

    # -- service provisioning

    def set_service(self, service: FlameService) -> None:
        self._service.set_result(service)

    def set_service_error(self, exc: Exception) -> None:
        self._service.set_exception(exc)
        self._service.exception()  # mark it retrieved: it is reported per call instead

    def cancel_service(self) -> None:
        self._service.cancel()

    @property
    def service(self) -> FlameService | None:
        """The service, if it has been built successfully."""
        fut = self._service
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return fut.result()
        return None

    async def _get_service(self) -> FlameService:
        return await asyncio.shield(self._service)

    # -- RPCs

    async def OnSessionEnter(
        self, request: shim_pb2.SessionContext, context: grpc.aio.ServicerContext
    ) -> types_pb2.Result:
        async with self._lock:
            self.entered = True
            try:
                ctx = _session_context(request)
                logger.info(
                    "entering session %s (application %s)", ctx.session_id, ctx.application.name
                )
                service = await self._get_service()
                await _call_hook(service.on_session_enter, ctx)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                logger.exception("on_session_enter failed for session %s", request.session_id)
                return types_pb2.Result(return_code=-1, message=format_error(exc))
            return types_pb2.Result(return_code=0)

    async def OnTaskInvoke(
        self, request: shim_pb2.TaskContext, context: grpc.aio.ServicerContext
    ) -> types_pb2.TaskResult:
        async with self._lock:
            ctx = _task_context(request)
            logger.debug("invoking task %s of session %s", ctx.task_id, ctx.session_id)
            try:
                service = await self._get_service()
                output = await _call_hook(service.on_task_invoke, ctx)
            except asyncio.CancelledError:
                raise
            except TaskFailure as failure:
                logger.info("task %s failed: %r", ctx.task_id, failure.cause)
                return types_pb2.TaskResult(
                    return_code=-1, message=format_error(failure.cause), output=failure.output
                )
            except BaseException as exc:
                logger.info("task %s of session %s failed: %r", ctx.task_id, ctx.session_id, exc)
                return types_pb2.TaskResult(return_code=-1, message=format_error(exc))
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
            if len(output) > _EXECUTOR_DECODE_LIMIT:
                logger.warning(
                    "task %s output is %d bytes; executors reject replies above %d bytes",
                    ctx.task_id,
                    len(output),
                    _EXECUTOR_DECODE_LIMIT,
                )
            return types_pb2.TaskResult(return_code=0, output=output)

    async def OnSessionLeave(
        self, request: types_pb2.EmptyRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.Result:
        async with self._lock:
            await self.leave(reason="OnSessionLeave")
        return types_pb2.Result(return_code=0)

    async def leave(self, reason: str) -> None:
        """Call the service's ``on_session_leave`` once; log, never raise, its failures."""
        if self.left:
            logger.debug("%s: session already left", reason)
            return
        self.left = True
        try:
            service = await self._get_service()
        except asyncio.CancelledError:
            raise
        except BaseException:
            logger.info("%s: no service to leave (it failed to load)", reason)
            return
        try:
            await _call_hook(service.on_session_leave)
        except asyncio.CancelledError:
            raise
        except BaseException:
            logger.exception("%s: on_session_leave failed (reported as success)", reason)
        else:
            logger.info("%s: session left", reason)


# --------------------------------------------------------------------------- entry points


async def _build_service(servicer: _InstanceServicer, factory: Callable[[], FlameService]) -> None:
    try:
        service = await _in_worker_thread(factory)
        if not isinstance(service, FlameService):
            raise ServiceLoadError(
                f"the service factory returned {type(service).__qualname__}, not a FlameService"
            )
    except asyncio.CancelledError:
        servicer.cancel_service()
        raise
    except BaseException as exc:
        logger.error("could not build the service: %s", format_error(exc))
        if not isinstance(exc, Exception):  # SystemExit and the like, from the factory
            exc = ServiceLoadError(f"the service factory raised {format_error(exc)}")
        servicer.set_service_error(exc)
    else:
        logger.info("service %s ready", type(service).__qualname__)
        servicer.set_service(service)


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> list[signal.Signals]:
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):

        def on_signal(sig: signal.Signals = sig) -> None:
            logger.info("received %s, shutting down", sig.name)
            stop.set()

        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            # Not the main thread, or not a Unix loop: the caller must stop us another way.
            logger.debug("cannot handle %s here: %s", sig.name, exc)
        else:
            installed.append(sig)
    return installed


async def serve(service: ServiceSpec, endpoint: str | None = None) -> None:
    """Serve the Instance service until SIGTERM or SIGINT, then clean up and return.

    ``service`` is a :class:`FlameService` instance, or a zero-argument callable (for
    example the service class) that builds one; a callable is only called after the socket
    is bound, in a worker thread, so slow imports there do not delay the executor.

    ``endpoint`` is the absolute path of the Unix socket to serve; it defaults to the
    ``FLAME_INSTANCE_ENDPOINT`` environment variable. A stale socket file at that path is
    replaced.

    Raises :class:`InstanceConfigError` if the endpoint is missing, not absolute, too long
    or cannot be bound, and :class:`TypeError` if ``service`` is neither a service nor
    callable.
    """
    if not isinstance(service, FlameService) and not callable(service):
        raise TypeError(
            f"service must be a FlameService or a callable returning one, "
            f"not {type(service).__qualname__}"
        )
    path = _resolve_endpoint(endpoint)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = _install_signal_handlers(loop, stop)
    inode: int | None = None
    server: grpc.aio.Server | None = None
    builder: asyncio.Task[None] | None = None
    servicer = _InstanceServicer()
    try:
        _remove_stale_socket(path)
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1)])
        add_servicer = cast(
            Callable[[object, object], None], shim_pb2_grpc.add_InstanceServicer_to_server
        )
        add_servicer(servicer, server)
        # Bind under a staging name and rename once listening: the executor connects
        # as soon as the socket file exists, and a bound but not yet listening socket
        # would refuse it.
        staging = _staging_path(path)
        try:
            server.add_insecure_port(f"unix://{staging}")
        except RuntimeError as exc:
            raise InstanceConfigError(
                f"cannot bind the Unix socket {path!r}: {exc} "
                "(does its directory exist and is it writable?)"
            ) from exc
        await server.start()
        if staging != path:
            os.rename(staging, path)
        try:
            inode = os.lstat(path).st_ino
        except OSError:
            inode = None
        logger.info("serving flame.v1.Instance on unix://%s (pid %d)", path, os.getpid())

        if isinstance(service, FlameService):
            servicer.set_service(service)
        else:
            builder = asyncio.create_task(_build_service(servicer, service))

        await stop.wait()

        await server.stop(SHUTDOWN_GRACE_SECONDS)
        server = None
        if servicer.entered and not servicer.left and servicer.service is not None:
            try:
                await asyncio.wait_for(
                    servicer.leave(reason="shutdown"), LEAVE_ON_SHUTDOWN_TIMEOUT_SECONDS
                )
            except asyncio.TimeoutError:
                logger.warning(
                    "on_session_leave did not finish within %.0f s; exiting anyway",
                    LEAVE_ON_SHUTDOWN_TIMEOUT_SECONDS,
                )
    finally:
        if builder is not None and not builder.done():
            builder.cancel()
        if server is not None:
            await server.stop(None)
        if inode is not None:
            _remove_own_socket(path, inode)
        for sig in installed:
            loop.remove_signal_handler(sig)
        logger.info("instance stopped")


def _staging_path(path: str) -> str:
    directory, name = os.path.split(path)
    staging = os.path.join(directory, f".{os.getpid()}.{name}")
    return staging if len(os.fsencode(staging)) <= _MAX_SOCKET_PATH_BYTES else path


def run(service: ServiceSpec, endpoint: str | None = None) -> None:
    """Run :func:`serve` in a new event loop; returns after SIGTERM or SIGINT."""
    asyncio.run(serve(service, endpoint))


_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}


def log_level_from_env(value: str | None) -> int:
    """Map a ``RUST_LOG``-style value (``"info"``, ``"warn,flame=debug"``) to a level.

    The first directive without a ``target=`` prefix decides; anything unknown is INFO.
    """
    for directive in (value or "").split(","):
        directive = directive.strip().lower()
        if directive and "=" not in directive:
            return _LEVELS.get(directive, logging.INFO)
    return logging.INFO


def configure_logging() -> None:
    """Send log records to stderr at the level named by ``FLAME_LOG``.

    For entry points (``python -m flmrun`` and the like) only; the library itself never
    configures logging.
    """
    logging.basicConfig(
        level=log_level_from_env(os.environ.get(LOG_ENV)),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
