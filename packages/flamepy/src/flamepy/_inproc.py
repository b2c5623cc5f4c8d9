"""An in-process transport to a Frontend served by this very program.

The embedded local cluster (flame-testkit) serves the Frontend over gRPC for
everyone else, and also registers its servicer here under its endpoint.  A
connection to that endpoint from the same process then calls the servicer
directly, on the servicer's own event loop, instead of going through two gRPC
stacks and the loopback interface: the same request and reply messages
(serialised and parsed, so nothing is shared), the same errors (an abort
becomes the ``grpc.aio.AioRpcError`` a channel would raise), a fraction of
the cost.  Connections to any other endpoint use gRPC as always.

The object registered must offer the Frontend's methods as a grpc.aio servicer
does: ``async def Method(request, context)`` for unary calls and async
generators for server streams.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio

from flamepy.proto import frontend_pb2_grpc

log = logging.getLogger("flamepy.inproc")

_DONE = object()
_closing: set[asyncio.Future[None]] = set()
"""Servicer generators being closed (a reference, so that they are not collected)."""


@dataclass(frozen=True)
class InProcessTarget:
    """A servicer and the event loop it runs on."""

    servicer: Any
    loop: asyncio.AbstractEventLoop


_lock = threading.Lock()
_targets: dict[str, InProcessTarget] = {}


def register(endpoint: str, servicer: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Serve connections to ``endpoint`` made in this process by calling ``servicer``."""
    with _lock:
        _targets[endpoint] = InProcessTarget(servicer, loop)


def unregister(endpoint: str) -> None:
    with _lock:
        _targets.pop(endpoint, None)


def lookup(endpoint: str) -> InProcessTarget | None:
    with _lock:
        target = _targets.get(endpoint)
    if target is None or target.loop.is_closed():
        return None
    return target


class _Context:
    """The part of ``grpc.aio.ServicerContext`` a servicer uses: abort."""

    async def abort(self, code: grpc.StatusCode, details: str = "", *args: Any) -> NoReturn:
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    def cancelled(self) -> bool:  # pragma: no cover - part of the context interface
        return False


MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""gRPC's default receive limit, which a real Frontend keeps (T3): a larger request
is refused with RESOURCE_EXHAUSTED in-process too."""


def _copy(message: Any) -> Any:
    return type(message).FromString(message.SerializeToString())


def _request_copy(message: Any, name: str) -> Any:
    data = message.SerializeToString()
    if len(data) > MAX_REQUEST_BYTES:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            f"{name}: the request is {len(data)} bytes, over the Frontend's limit of "
            f"{MAX_REQUEST_BYTES} (4 MiB); send large data through the object cache",
        )
    return type(message).FromString(data)


def _unavailable(what: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        f"the in-process Frontend stopped during {what}",
    )


class _Stream:
    """A server stream.  On the servicer's own loop the caller iterates the
    servicer's generator itself; from another loop, the generator runs on its
    loop and the messages are handed over through a queue."""

    def __init__(self, target: InProcessTarget, method: Callable[..., Any], request: Any) -> None:
        self._target = target
        self._method = method
        self._request = request
        self._queue: asyncio.Queue[Any] | None = None
        self._pump: concurrent.futures.Future[None] | None = None
        self._source: AsyncGenerator[Any, None] | None = None  # same loop: the servicer's

    def __aiter__(self) -> AsyncIterator[Any]:
        if asyncio.get_running_loop() is self._target.loop:
            return self._read_here()
        return self._read()

    async def _read_here(self) -> AsyncIterator[Any]:
        source = self._source = self._method(self._request, _Context())
        async for message in source:
            yield _copy(message)

    def _start(self) -> asyncio.Queue[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = queue

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        async def pump() -> None:
            try:
                async for message in self._method(self._request, _Context()):
                    put(_copy(message))
            except BaseException as exc:  # handed to the reader, which raises it
                put(exc if isinstance(exc, Exception) else _unavailable("a stream"))
                if not isinstance(exc, Exception):
                    raise
            else:
                put(_DONE)

        self._pump = asyncio.run_coroutine_threadsafe(pump(), self._target.loop)
        return queue

    async def _read(self) -> AsyncIterator[Any]:
        queue = self._queue or self._start()
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> bool:
        source, self._source = self._source, None
        if source is not None:
            # The reader stopped reading: close the servicer's generator now rather
            # than when it is collected.  It is suspended (its reader is not running).
            if getattr(source, "ag_frame", None) is None:  # it finished
                return False
            closing = asyncio.ensure_future(source.aclose())
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)
            return True
        pump = self._pump
        if pump is None or pump.done():
            return False
        self._target.loop.call_soon_threadsafe(pump.cancel)
        return True


async def _bounded(coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
    """``await coro`` within ``timeout``, without the task ``wait_for`` would make."""
    if timeout is None:
        return await coro
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await coro
    return await asyncio.wait_for(coro, timeout)  # pragma: no cover - Python 3.10


class InProcessStub:
    """Quacks like ``FrontendStub`` over a channel, for the methods flamepy calls."""

    def __init__(self, target: InProcessTarget) -> None:
        self._target = target
        for name, _ in inspect.getmembers(
            frontend_pb2_grpc.FrontendServicer, predicate=inspect.isfunction
        ):
            if not name.startswith("_"):
                setattr(self, name, self._callable(name))

    def _callable(self, name: str) -> Callable[..., Any]:
        target = self._target
        method = getattr(target.servicer, name)
        if inspect.isasyncgenfunction(method):

            def stream(request: Any, timeout: float | None = None, **_: Any) -> _Stream:
                return _Stream(target, method, _request_copy(request, name))

            return stream

        def expired(timeout: float | None) -> grpc.aio.AioRpcError:
            return grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                f"{name} took longer than {timeout}s",
            )

        async def unary(request: Any, timeout: float | None = None, **_: Any) -> Any:
            loop = asyncio.get_running_loop()
            started = loop.time()
            coro = method(_request_copy(request, name), _Context())
            try:
                if loop is target.loop:
                    reply = await _bounded(coro, timeout)
                else:
                    future = asyncio.run_coroutine_threadsafe(coro, target.loop)
                    reply = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
            except asyncio.TimeoutError:
                raise expired(timeout) from None
            # As over a channel: a reply that comes after the deadline is not a reply.
            if timeout is not None and loop.time() - started > timeout:
                raise expired(timeout)
            return _copy(reply)

        return unary
