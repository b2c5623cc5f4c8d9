"""Unix socket files: path checks, replacing a stale one, removing our own."""

from __future__ import annotations

import logging
import os
import stat

from flmrun._errors import InstanceConfigError

logger = logging.getLogger("flmrun.server")

MAX_SOCKET_PATH_BYTES = 107
"""``sizeof(sockaddr_un.sun_path) - 1`` on Linux."""


def fits_socket_path(path: str) -> bool:
    """Whether ``path`` is short enough to bind a Unix socket at."""
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES


def remove_stale_socket(path: str) -> None:
    """Delete a leftover socket file at ``path``; refuse to delete anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InstanceConfigError(f"{path!r} exists and is not a socket; refusing to replace it")
    logger.info("removing stale socket file %s", path)
    os.unlink(path)


def socket_inode(path: str) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None


def remove_own_socket(path: str, inode: int | None) -> None:
    """Delete the socket file at ``path`` if it is still the one this process bound."""
    try:
        st = os.lstat(path)
        if inode is None or st.st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove socket file %s: %s", path, exc)
