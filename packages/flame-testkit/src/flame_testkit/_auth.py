"""Who may use a local cluster: its owner only.

By default every server of a local cluster (the Frontend, the object cache, the
instances' sockets) listens on a Unix socket in the cluster's runtime directory,
which :func:`runtime_dir` creates 0700: the kernel refuses every other account at
``connect``, before a byte is read, and there is no secret to leak.

A cluster served over TCP (``flame-local up --port``) cannot rely on that, so it
requires a token (:func:`new_token`, kept in a 0600 file) with every request:
:class:`FrontendTokenCheck` for gRPC and :class:`CacheTokenCheck` for Flight. A
request without it is refused with UNAUTHENTICATED.  The client side is
``flamepy._auth``.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pyarrow.flight as flight

from flame_testkit._errors import ClusterConfigError
from flamepy._auth import AUTH_HEADER, bearer
from flamepy._owner import OWNER_FILE, claim, sweep_dead

log = logging.getLogger("flame_testkit.auth")

TOKEN_BYTES = 32
"""Random bytes in a generated token (URL-safe base64 text of 43 characters)."""
TOKEN_FILE_NAME = "token"
UNAUTHENTICATED = (
    "this local Flame cluster requires its access token: set FLAME_TOKEN_FILE to the "
    "token file that 'flame-local up' printed (or FLAME_TOKEN to its contents)"
)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _short_tmp() -> str | None:
    # Unix socket paths are limited to ~107 bytes: keep them under /tmp.
    return "/tmp" if Path("/tmp").is_dir() else None


RUNTIME_PREFIX = "flms-"
WORK_PREFIX = "flame-local-"


def write_private(path: Path, text: str, *, replace: bool = False) -> Path:
    """Write ``text`` to ``path``, a file only the owner can read (0600), never
    through a symbolic link; a new file unless ``replace``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def runtime_dir(prefix: str = RUNTIME_PREFIX) -> Path:
    """A new owner-only (0700) directory for a cluster's sockets and token file,
    claimed by this process; those of dead processes are swept first."""
    parent = _short_tmp()
    sweep_dead(Path(parent or tempfile.gettempdir()), prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # mkdtemp: 0700
    os.chmod(path, 0o700)
    return claim(path)


def work_dir() -> Path:
    """A new owner-only temporary work directory, claimed; dead ones are swept."""
    sweep_dead(Path(tempfile.gettempdir()), WORK_PREFIX)
    return claim(Path(tempfile.mkdtemp(prefix=WORK_PREFIX)))


def owner_only_dir(path: Path, what: str) -> Path:
    """Create ``path`` 0700, or check that an existing one is ours and make it 0700.

    A directory of another account (or a symlink, or a non-directory) is refused
    with :class:`ClusterConfigError`: its owner could read or replace what the
    cluster writes there.
    """
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ClusterConfigError(f"cannot create the {what} {path}: {exc.strerror}") from exc
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ClusterConfigError(
            f"the {what} {path} is not a directory (or is a symbolic link); "
            "name a directory of your own"
        )
    if info.st_uid != os.geteuid():
        raise ClusterConfigError(
            f"the {what} {path} belongs to another account (uid {info.st_uid}); the "
            "local cluster keeps packages, logs and payloads there, so it must be yours: "
            "name a directory you own, or leave the option out for a private temporary one"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
        log.info("made the %s %s owner-only (0700)", what, path)
    return path


def write_token_file(path: Path, token: str) -> Path:
    """Write ``token`` to a new file that only the owner can read (0600)."""
    return write_private(path, token + "\n")


def _matches(values: Any, expected: str) -> bool:
    return any(isinstance(v, str) and hmac.compare_digest(v, expected) for v in values)


class FrontendTokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse every Frontend call that does not carry the cluster's token."""

    def __init__(self, token: str) -> None:
        self._expected = bearer(token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        metadata = handler_call_details.invocation_metadata or ()
        if _matches((v for k, v in metadata if k == AUTH_HEADER), self._expected):
            return await continuation(handler_call_details)
        log.warning("refused %s: no valid access token", handler_call_details.method)
        handler = await continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny_stream)
        return grpc.unary_unary_rpc_method_handler(_deny)


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
    yield  # pragma: no cover - abort raises


class CacheTokenCheck(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Refuse every Flight call that does not carry the cluster's token."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = bearer(token)

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> None:
        if not _matches(headers.get(AUTH_HEADER, ()), self._expected):
            log.warning("refused a cache %s call: no valid access token", info.method)
            raise flight.FlightUnauthenticatedError(UNAUTHENTICATED)
        return None


__all__ = [
    "OWNER_FILE",
    "TOKEN_FILE_NAME",
    "CacheTokenCheck",
    "FrontendTokenCheck",
    "claim",
    "new_token",
    "owner_only_dir",
    "runtime_dir",
    "sweep_dead",
    "work_dir",
    "write_private",
    "write_token_file",
]
