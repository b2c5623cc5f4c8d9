"""Start, stop and address of the local Frontend server.

It listens on a Unix socket (``unix_path``, owner-only by its directory) or on
TCP (``host``, port 0 picks a free one), optionally with TLS and a required token.
"""

from __future__ import annotations

import logging

import grpc
import grpc.aio

from flame_testkit._auth import FrontendTokenCheck
from flame_testkit._servicer import FrontendServicer
from flamepy.proto import frontend_pb2_grpc

log = logging.getLogger("flame_testkit.server")

DEFAULT_HOST = "127.0.0.1"
STOP_GRACE = 2.0
SERVER_OPTIONS = (
    ("grpc.so_reuseport", 0),
    # gRPC cancels calls once more than ~1000 wait for a handler; a burst of task
    # submissions from one client can exceed that while the loop is busy.
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 200_000),
)


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
        frontend_pb2_grpc.add_FrontendServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
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
