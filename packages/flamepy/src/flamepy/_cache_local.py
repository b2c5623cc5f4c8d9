"""Same-host transfers with a flame-testkit object cache: payloads as files.

A cache on this host may offer a *transfer directory* (on ``/dev/shm``, so the
files are memory) through three Flight actions; the server side and the
action table are in ``flame_testkit._cache_local``.  A put then writes the
encoded payload once into a file there and has the server adopt it, and a get
maps the object's file instead of streaming it: an Arrow tensor is read in
place, a pickle straight from the mapping.

Whether a cache offers it is asked once per client, and only of a cache on a
loopback address.  The reply must name a directory holding the token the
server wrote, which proves the two share the file system.  Any other answer
(Flame's own cache refuses the action) keeps the client on Flight.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from flamepy._cache_codec import MAGIC_PICKLE, MAGIC_TENSOR, tensor_of

log = logging.getLogger("flamepy.cache")

LOCAL_MIN_BYTES = 64 * 1024
"""Payloads from this size on are handed over as files when the cache offers it."""
TOKEN_FILE = "TOKEN"
_PICKLE_BYTES8 = b"\x80\x05\x8e"  # PROTO 5, BINBYTES8 (then the 8-byte length)
_PICKLE_STOP = b"."


@dataclass(frozen=True)
class TransferDir:
    """A cache's transfer directory, checked to be the one the server sees."""

    path: Path

    @classmethod
    def verified(cls, directory: object, token: object) -> TransferDir | None:
        """The directory, if it holds ``token`` and is ours alone (owned by this
        user, writable by no one else); else None."""
        if not isinstance(directory, str) or not isinstance(token, str) or not token:
            return None
        path = Path(directory)
        try:
            info = path.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                return None
            if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return None
            found = (path / TOKEN_FILE).read_text()
        except (OSError, ValueError):
            return None
        return cls(path) if found == token else None

    def write(self, payload: pa.Buffer) -> str:
        """Write ``payload`` to a new file here; returns its name (for LOCAL_PUT)."""
        return self._write([memoryview(payload)])

    def write_value(self, obj: Any) -> str | None:
        """Encode ``obj`` straight into a new file, for the values whose encoding
        is their own memory plus a few bytes around it: ``bytes`` (``FLM\\0`` and a
        pickle holding one BINBYTES8) and numeric numpy arrays (``FLM\\1`` and an
        Arrow tensor).  The value's memory is copied once, by the kernel, into the
        file; None for any other value."""
        if type(obj) is bytes:
            head = MAGIC_PICKLE + _PICKLE_BYTES8 + struct.pack("<Q", len(obj))
            return self._write([head, memoryview(obj), _PICKLE_STOP])
        tensor = tensor_of(obj)
        if tensor is None:
            return None

        def fill(fd: int) -> None:
            # Through the descriptor we created (O_EXCL, O_NOFOLLOW), not the name.
            with pa.OSFile(f"/proc/self/fd/{fd}", "wb") as sink:
                sink.write(MAGIC_TENSOR)
                pa.ipc.write_tensor(tensor, sink)

        return self._create(fill)

    def _write(self, pieces: list[bytes | memoryview]) -> str:
        def fill(fd: int) -> None:
            for piece in pieces:
                view = memoryview(piece).cast("B")
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])

        return self._create(fill)

    def _create(self, fill: Callable[[int], None]) -> str:
        name = f"{uuid.uuid4().hex}.part"
        path = self.path / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            fill(fd)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return name

    def discard(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def map(self, name: str) -> pa.Buffer | None:
        """The file ``name``, mapped read-only; None when it is gone (the object was
        replaced or deleted meanwhile) or is not a plain file name here."""
        if "/" in name or "\0" in name or name in ("", ".", ".."):
            return None
        try:
            return map_file(self.path / name)
        except (OSError, ValueError):
            return None


def map_file(path: Path) -> pa.Buffer:
    """The whole of a regular file, mapped read-only, as a zero-copy buffer.

    It is opened without following a symlink and without blocking (a FIFO), and
    must be a regular file (ValueError otherwise; OSError if it cannot be opened).
    The mapping outlives the file's name and keeps no descriptor open (Python's
    ``mmap`` keeps a duplicate until 3.13; Arrow's does not), so thousands of
    mapped objects cost no file descriptors.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("a transfer file must be a regular file")
        source = pa.memory_map(f"/proc/self/fd/{fd}")
        try:
            return source.read_buffer()
        finally:
            source.close()
    finally:
        os.close(fd)


def direct_size(obj: Any) -> int:
    """The size of a value :meth:`TransferDir.write_value` writes directly, else 0."""
    if type(obj) is bytes:
        return len(obj)
    if type(obj).__name__ == "ndarray" and type(obj).__module__ == "numpy":
        return int(obj.nbytes)
    return 0


def is_loopback(endpoint: str) -> bool:
    """Whether the cache endpoint's host is this machine's loopback."""
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["LOCAL_MIN_BYTES", "TransferDir", "direct_size", "is_loopback", "map_file"]
