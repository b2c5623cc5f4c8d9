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
  alive after SIGTERM. The calls themselves are in ``flmrun._servicer``.
* A local executor manager may also offer the task stream (``FLMRUN_TASK_STREAM``, see
  ``flmrun._stream``): the same calls over a plain Unix socket, without gRPC's cost.
* On SIGTERM or SIGINT the server stops (in-flight calls get up to 5 s), the service's
  ``on_session_leave`` runs if the session was entered but not left, the socket file is
  removed, and :func:`serve` returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TypeAlias, cast

import grpc

from flamepy._cache.maps import keep_mappings
from flamepy.proto import shim_pb2_grpc
from flmrun._errors import InstanceConfigError, ServiceLoadError
from flmrun._memory import apply_from_env
from flmrun._service import FlameService
from flmrun._servicer import InstanceCore, InstanceServicer, format_error, in_worker_thread
from flmrun._stream import STREAM_ENV, TaskStream, check_stream_path
from flmrun._unix import (
    MAX_SOCKET_PATH_BYTES,
    fits_socket_path,
    remove_own_socket,
    remove_stale_socket,
    socket_inode,
)

__all__ = ["ENDPOINT_ENV", "configure_logging", "format_error", "run", "serve"]

logger = logging.getLogger("flmrun.server")

ENDPOINT_ENV = "FLAME_INSTANCE_ENDPOINT"
"""The environment variable holding the instance's Unix socket path."""

LOG_ENV = "FLAME_LOG"
"""The environment variable holding the log level (RUST_LOG syntax)."""

SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    # The executor manager pings (as often as every 10 s, with no call running):
    # allow it, so a stopped instance is noticed and a live one is not dropped.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
)
PARENT_CHECK_INTERVAL = 1.0
"""Seconds between two checks that the executor manager still runs."""
SHUTDOWN_GRACE_SECONDS = 5.0
"""How long in-flight RPCs may run on after SIGTERM/SIGINT."""

LEAVE_ON_SHUTDOWN_TIMEOUT_SECONDS = 5.0
"""How long ``on_session_leave`` may take when it is called during shutdown."""

ServiceSpec: TypeAlias = "FlameService | Callable[[], FlameService]"
"""A service instance, or a zero-argument callable (such as the class) that builds one."""


# --------------------------------------------------------------------------- helpers


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
    if not fits_socket_path(endpoint):
        raise InstanceConfigError(
            f"{source} is {endpoint!r}, which is longer than the "
            f"{MAX_SOCKET_PATH_BYTES} bytes a Unix socket path may have"
        )
    return endpoint


# --------------------------------------------------------------------------- entry points


async def _build_service(core: InstanceCore, factory: Callable[[], FlameService]) -> None:
    try:
        service = await in_worker_thread(factory)
        if not isinstance(service, FlameService):
            raise ServiceLoadError(
                f"the service factory returned {type(service).__qualname__}, not a FlameService"
            )
    except asyncio.CancelledError:
        core.cancel_service()
        raise
    except BaseException as exc:
        logger.error("could not build the service: %s", format_error(exc))
        if not isinstance(exc, Exception):  # SystemExit and the like, from the factory
            exc = ServiceLoadError(f"the service factory raised {format_error(exc)}")
        core.set_service_error(exc)
    else:
        logger.info("service %s ready", type(service).__qualname__)
        core.set_service(service)


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
    replaced. When ``FLMRUN_TASK_STREAM`` names a path, the task stream
    (``flmrun._stream``) is served there as well.

    Raises :class:`InstanceConfigError` if an endpoint is missing, not absolute, too long
    or cannot be bound, and :class:`TypeError` if ``service`` is neither a service nor
    callable.
    """
    as_service = getattr(service, "as_service", None)
    if not isinstance(service, FlameService) and callable(as_service):
        service = as_service()  # a flamepy.service.FlameInstance, served as in 0.6
    if not isinstance(service, FlameService) and not callable(service):
        raise TypeError(
            f"service must be a FlameService or a callable returning one, "
            f"not {type(service).__qualname__}"
        )
    path = _resolve_endpoint(endpoint)
    stream_path = os.environ.get(STREAM_ENV) or None
    if stream_path is not None:
        check_stream_path(stream_path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = _install_signal_handlers(loop, stop)
    inode: int | None = None
    server: grpc.aio.Server | None = None
    stream: TaskStream | None = None
    builder: asyncio.Task[None] | None = None
    core = InstanceCore(loop)
    try:
        remove_stale_socket(path)
        server = grpc.aio.server(options=SERVER_OPTIONS)
        add_servicer = cast(
            Callable[[object, object], None], shim_pb2_grpc.add_InstanceServicer_to_server
        )
        add_servicer(InstanceServicer(core), server)
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
        if stream_path is not None:  # listening before the gRPC socket appears
            stream = TaskStream(stream_path, core)
        if staging != path:
            os.rename(staging, path)
        inode = socket_inode(path)
        logger.info("serving flame.v1.Instance on unix://%s (pid %d)", path, os.getpid())

        if isinstance(service, FlameService):
            core.set_service(service)
        else:
            builder = asyncio.create_task(_build_service(core, service))

        watcher = asyncio.create_task(_watch_parent(stop))
        await stop.wait()
        watcher.cancel()

        if stream is not None:
            stream.close()
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        server = None
        if core.entered and not core.left and core.service is not None:
            try:
                await asyncio.wait_for(
                    in_worker_thread(lambda: core.leave(reason="shutdown")),
                    LEAVE_ON_SHUTDOWN_TIMEOUT_SECONDS,
                )
            except asyncio.TimeoutError:
                logger.warning(
                    "on_session_leave did not finish within %.0f s; exiting anyway",
                    LEAVE_ON_SHUTDOWN_TIMEOUT_SECONDS,
                )
    finally:
        if builder is not None and not builder.done():
            builder.cancel()
        if stream is not None:
            stream.close()
        if server is not None:
            await server.stop(None)
        if inode is not None:
            remove_own_socket(path, inode)
        for sig in installed:
            loop.remove_signal_handler(sig)
        logger.info("instance stopped")


async def _watch_parent(stop: asyncio.Event, interval: float = PARENT_CHECK_INTERVAL) -> None:
    """Stop when the process that launched this instance (the executor manager) is
    gone, as after a SIGKILL: an orphan would hold its slot's work forever.  Its
    shutdown is given the usual grace, then the process exits regardless."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(interval)
        if os.getppid() != parent:
            logger.warning("the executor manager (pid %d) is gone; stopping", parent)
            stop.set()
            grace = SHUTDOWN_GRACE_SECONDS + LEAVE_ON_SHUTDOWN_TIMEOUT_SECONDS + 1.0
            asyncio.get_running_loop().call_later(grace, os._exit, 1)
            return


def _staging_path(path: str) -> str:
    directory, name = os.path.split(path)
    staging = os.path.join(directory, f".{os.getpid()}.{name}")
    return staging if fits_socket_path(staging) else path


def run(service: ServiceSpec, endpoint: str | None = None) -> None:
    """Run :func:`serve` in a new event loop; returns after SIGTERM or SIGINT.

    This is an instance process's entry point, so it also sets the process's
    memory policy: freed memory is kept for reuse (``flmrun._memory``,
    ``FLMRUN_HEAP_KEEP``), and so are the mappings of the transfer files it
    writes results into (``flamepy._cache.maps``, at its default bounds).
    """
    try:
        apply_from_env()
    except ValueError as exc:
        raise InstanceConfigError(str(exc)) from None
    keep_mappings()
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
