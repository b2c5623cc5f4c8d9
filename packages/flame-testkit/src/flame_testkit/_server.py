"""Start, stop and address of the local Frontend server.

It listens on a Unix socket (``unix_path``, owner-only by its directory) or on
TCP (``host``, port 0 picks a free one), optionally with TLS and a required token.

A request body that does not parse as the method's request message is answered with
INVALID_ARGUMENT naming the method and the expected message type (:func:`parse_checked`),
as a protobuf server should; grpc would otherwise answer UNKNOWN.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from flame_testkit._auth import FrontendTokenCheck
from flame_testkit._launch import keepalive_ms
from flame_testkit._servicer import FrontendServicer
from flamepy.proto import frontend_pb2_grpc

log = logging.getLogger("flame_testkit.server")

DEFAULT_HOST = "127.0.0.1"
STOP_GRACE = 2.0
SERVER_KEEPALIVE_MS = keepalive_ms()
"""The Frontend pings each client every 10 s (``FLAME_KEEPALIVE`` seconds when
set) and drops one that does not answer within as long again."""
SERVER_OPTIONS = (
    ("grpc.so_reuseport", 0),
    # gRPC cancels calls once more than ~1000 wait for a handler; a burst of task
    # submissions from one client can exceed that while the loop is busy.
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 200_000),
    # Keepalive both ways: the server pings its clients (a stopped or vanished one
    # is dropped, and its streams end), and lets them ping as often as every second
    # (flamepy pings a local cluster every FLAME_KEEPALIVE seconds).
    ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_MS),
    ("grpc.http2.ping_timeout_ms", SERVER_KEEPALIVE_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.max_pings_without_data", 0),
)


FRONTEND_SERVICE = "flame.v1.Frontend"


@dataclass(frozen=True)
class _Unparsable:
    """What a request deserializer returns for bytes that are not the request message."""

    message: str


def parse_checked(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with a request that does not parse answered by INVALID_ARGUMENT.

    A deserializer cannot choose the status, so the wrapped one returns an
    :class:`_Unparsable` and the wrapped behaviour aborts with its message."""
    parse: Callable[[bytes], Any] | None = handler.request_deserializer
    if parse is None:
        return handler
    message_type = getattr(
        getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None), "full_name", ""
    )
    expected = f"a serialized {message_type} message" if message_type else "its request message"

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception as exc:  # DecodeError, or anything else the bytes provoke
            log.debug("unparsable %s request: %s", method, exc)
            return _Unparsable(
                f"invalid {method} request: the body is not {expected} ({exc}); "
                "send the method's request message, e.g. with the generated stub"
            )

    unary, stream = handler.unary_unary, handler.unary_stream
    if unary is not None and inspect.iscoroutinefunction(unary):

        async def checked_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Unparsable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked_unary,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
    if stream is not None and inspect.isasyncgenfunction(stream):

        async def checked_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            if isinstance(request, _Unparsable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async with contextlib.aclosing(stream(request, context)) as replies:
                async for reply in replies:
                    yield reply

        return grpc.unary_stream_rpc_method_handler(
            checked_stream,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
    return handler  # a kind the Frontend does not have: left as grpc serves it


class _Capture:
    """Stands in for a server to collect what a generated ``add_*_to_server`` adds."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers.update(handlers)


def add_frontend(servicer: FrontendServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` on ``server`` as the generated code does, with every
    method's request parsing checked (:func:`parse_checked`)."""
    capture = _Capture()
    frontend_pb2_grpc.add_FrontendServicer_to_server(servicer, capture)  # type: ignore[no-untyped-call]
    if not capture.handlers:
        raise RuntimeError("the generated Frontend stubs registered no method handlers")
    handlers = {
        name: parse_checked(f"/{FRONTEND_SERVICE}/{name}", handler)
        for name, handler in capture.handlers.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(FRONTEND_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(FRONTEND_SERVICE, handlers)


class FrontendServer:
    """A grpc.aio server for one :class:`FrontendServicer`."""

    def __init__(
        self,
        servicer: FrontendServicer,
        host: str = DEFAULT_HOST,
        port: int = 0,
        tls: tuple[bytes, bytes] | None = None,
        *,
        unix_path: str | None = None,
        token: str | None = None,
    ) -> None:
        """``tls`` is ``(certificate chain PEM, private key PEM)``; plaintext when None.
        ``unix_path``: listen there instead of on TCP.  ``token``: refuse calls
        without it (UNAUTHENTICATED)."""
        self.servicer = servicer
        self.host = host
        self._requested_port = port
        self._tls = tls
        self._unix_path = unix_path
        self._token = token
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        if self._unix_path is not None:
            return f"unix://{self._unix_path}"
        scheme = "https" if self._tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        interceptors = [FrontendTokenCheck(self._token)] if self._token is not None else None
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        add_frontend(self.servicer, server)
        if self._unix_path is not None:
            if server.add_insecure_port(f"unix:{self._unix_path}") == 0:
                raise OSError(f"cannot bind the Frontend server to {self._unix_path}")
            await server.start()
            self._server = server
            log.debug("Frontend listening on %s", self.endpoint)
            return
        host = f"[{self.host}]" if ":" in self.host else self.host
        address = f"{host}:{self._requested_port}"
        if self._tls is not None:
            creds = grpc.ssl_server_credentials([(self._tls[1], self._tls[0])])
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind the Frontend server to {self.host}:{self._requested_port}")
        await server.start()
        self._server = server
        log.debug("Frontend listening on %s", self.endpoint)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
