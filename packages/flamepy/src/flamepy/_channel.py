"""gRPC channel creation for the Frontend endpoint."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import grpc.aio

from flamepy._auth import channel_interceptors, token_for
from flamepy._config import parse_endpoint
from flamepy._errors import ConfigError, ConnectionFailedError

# The Frontend never raises the 4 MiB default; lifting our receive limit lets us read
# a large task output that a real server would still send.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.max_receive_message_length", -1),)

KEEPALIVE_ENV = "FLAME_KEEPALIVE"
"""Seconds between keepalive pings (0: none).  A server that does not answer within
as long again is dropped, and the calls waiting on it fail instead of hanging."""
DEFAULT_LOCAL_KEEPALIVE = 10.0
"""On a Unix socket (a local cluster, which allows pings): ping every 10 s.  Over TCP
the default is no pings: servers with gRPC's default policy answer pings more
frequent than every 5 minutes with GOAWAY "too many pings"."""


def keepalive_seconds(endpoint: str) -> float:
    """The keepalive interval for ``endpoint`` (``FLAME_KEEPALIVE`` wins)."""
    raw = os.environ.get(KEEPALIVE_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"{KEEPALIVE_ENV}={raw!r} is not a number of seconds; set it to e.g. 10, "
                "or 0 for no keepalive pings"
            ) from None
        if value < 0:
            raise ConfigError(f"{KEEPALIVE_ENV} must not be negative, got {raw!r}")
        return value
    return DEFAULT_LOCAL_KEEPALIVE if endpoint.startswith("unix:") else 0.0


def keepalive_options(seconds: float) -> tuple[tuple[str, int], ...]:
    """gRPC channel options for pings every ``seconds`` (none for 0)."""
    if seconds <= 0:
        return ()
    ms = max(1, int(seconds * 1000))
    return (
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC's keepalive_timeout no longer ends a ping that gets no answer; this does.
        ("grpc.http2.ping_timeout_ms", ms),
    )


def _target(endpoint: str) -> tuple[str, bool]:
    scheme, host, port = parse_endpoint(endpoint)
    if scheme == "unix":
        return f"unix:{host}", False
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}", scheme == "https"


def open_channel(endpoint: str, ca_file: str | None = None) -> grpc.aio.Channel:
    """Create (but do not wait on) an aio channel for ``endpoint``.

    ``unix:///path`` is a Unix socket; the configured access token, if any, goes with
    every call to the configured endpoint (``flamepy._auth``)."""
    target, tls = _target(endpoint)
    interceptors = channel_interceptors(token_for(endpoint))
    options = CHANNEL_OPTIONS + keepalive_options(keepalive_seconds(endpoint))
    if not tls:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    root = None
    if ca_file:
        path = Path(ca_file).expanduser()
        try:
            root = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the CA file {path} configured for {endpoint}: {exc.strerror}; "
                "fix cluster.tls.ca_file in flame.yaml or FLAME_CA_FILE"
            ) from exc
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)


HINT = "check that it is running and that FLAME_ENDPOINT or cluster.endpoint in flame.yaml names it"


async def _ready_or_refused(channel: grpc.aio.Channel) -> bool:
    """Wait for READY (True) or a first TRANSIENT_FAILURE (False)."""
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return False
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return True


async def wait_ready(channel: grpc.aio.Channel, endpoint: str, timeout: float) -> None:
    """Wait until ``channel`` connects, or fail with an error naming ``endpoint``.

    A refused connection fails at once; an unanswered one after ``timeout`` s.
    """
    try:
        ready = await asyncio.wait_for(_ready_or_refused(channel), timeout)
    except asyncio.TimeoutError:
        raise ConnectionFailedError(
            f"cannot reach the Flame session manager at {endpoint} within {timeout:g}s; {HINT}"
        ) from None
    if not ready:
        raise ConnectionFailedError(
            f"cannot connect to the Flame session manager at {endpoint}: the connection "
            f"failed (nothing listening, a TLS mismatch, or a socket this account may not "
            f"open); {HINT}"
        )
