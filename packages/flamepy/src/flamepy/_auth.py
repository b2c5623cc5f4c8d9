"""Access tokens, for a local cluster that is served over TCP.

Flame's own servers have no authentication.  flame-testkit's local cluster is
owner-only: by default it listens on Unix sockets in a 0700 directory, where the
kernel keeps other accounts out and no token is needed.  When it is asked to listen
on TCP (``flame-local up --port``), it requires a secret instead, which every
request carries as ``authorization: Bearer <token>`` (gRPC metadata to the Frontend,
a Flight header to the object cache).

The client's token is ``FLAME_TOKEN``, else the contents of ``FLAME_TOKEN_FILE``
or of ``cluster.token_file`` in flame.yaml.  It is sent only to the configured
Frontend and cache endpoints, never to any other address (an ObjectRef may name
another cache).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from flamepy._errors import ConfigError

log = logging.getLogger("flamepy.auth")

AUTH_HEADER = "authorization"
"""The header (gRPC metadata key, Flight header) that carries the token."""
BEARER = "Bearer "


def bearer(token: str) -> str:
    """The header value for ``token``."""
    return BEARER + token


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token stored in ``path`` (surrounding blanks removed).

    A missing, unreadable or empty file raises :class:`ConfigError`; a file that
    other accounts can read is used, with a warning that says how to fix it.
    """
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        token = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"cannot read the access token file {file}: {reason}; fix FLAME_TOKEN_FILE or "
            "cluster.token_file in flame.yaml (flame-local up prints the file it wrote)"
        ) from exc
    if not token:
        raise ConfigError(
            f"the access token file {file} is empty; it must hold the token that the "
            "cluster was started with"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the access token file %s can be read by other accounts (mode %o); run 'chmod 600 %s'",
            file,
            stat.S_IMODE(mode),
            file,
        )
    return token


def _same_endpoint(a: str, b: str | None) -> bool:
    if b is None:
        return False
    from flamepy._config import CACHE_SCHEMES, CLUSTER_SCHEMES, parse_endpoint

    schemes = (*CLUSTER_SCHEMES, *CACHE_SCHEMES)
    tls = {"https", "grpcs", "grpc+tls"}
    try:
        ka, ha, pa_ = parse_endpoint(a, schemes=schemes)
        kb, hb, pb = parse_endpoint(b, schemes=schemes)
    except ConfigError:
        return False
    unix = {"unix", "grpc+unix"}
    if ka in unix or kb in unix:
        return ka in unix and kb in unix and ha == hb
    return (ka in tls) == (kb in tls) and ha.lower() == hb.lower() and pa_ == pb


def token_for(endpoint: str) -> str | None:
    """The configured token, when ``endpoint`` is the configured Frontend or cache."""
    from flamepy._config import FlameContext

    ctx = FlameContext()
    if ctx.token is None:
        return None
    if _same_endpoint(endpoint, ctx.configured_endpoint) or _same_endpoint(
        endpoint, ctx.configured_cache_endpoint
    ):
        return ctx.token
    log.debug("not sending the access token to %s: it is not a configured endpoint", endpoint)
    return None


# -- gRPC (the Frontend) ------------------------------------------------------------


def _with_token(details: grpc.aio.ClientCallDetails, value: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(AUTH_HEADER, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._value = bearer(token)

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._value), request)


class _UnaryStreamToken(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._value = bearer(token)

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> AsyncIterable[Any] | Any:
        return await continuation(_with_token(client_call_details, self._value), request)


def channel_interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor] | None:
    """Interceptors that add ``token`` to every Frontend call (None: no token)."""
    if token is None:
        return None
    return [_UnaryUnaryToken(token), _UnaryStreamToken(token)]


# -- Flight (the object cache) -------------------------------------------------------


def flight_middleware(token: str | None) -> list[Any] | None:
    """Flight client middleware that adds ``token`` to every call (None: no token)."""
    if token is None:
        return None
    import pyarrow.flight as flight

    headers = {AUTH_HEADER: bearer(token)}

    class _Sender(flight.ClientMiddleware):  # type: ignore[misc]
        def sending_headers(self) -> dict[str, str]:
            return headers

    class _Factory(flight.ClientMiddlewareFactory):  # type: ignore[misc]
        def start_call(self, info: Any) -> _Sender:
            return _Sender()

    return [_Factory()]


__all__ = [
    "AUTH_HEADER",
    "bearer",
    "channel_interceptors",
    "flight_middleware",
    "read_token_file",
    "token_for",
]
