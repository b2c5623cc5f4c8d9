"""Same-host transfers with a flame-testkit object cache: payloads as files.

A cache on this host may offer a *transfer directory* (on ``/dev/shm``, so the
files are memory) through three Flight actions; the server side and the
action table are in ``flame_testkit._cache_local``.  A put then writes the
encoded payload once into a file there and has the server adopt it, and a get
maps the object's file instead of streaming it: an Arrow tensor is read in
place, a pickle straight from the mapping.

A write first tries to reuse a file from the directory's pool (``free/``: the
files of objects the server dropped).  It claims one by renaming it, then takes
a write lease on it, which the kernel grants only when no other descriptor or
mapping of the file exists anywhere; a file still mapped by some reader goes
back to the pool untouched.  A reused file's memory is already allocated, so
the payload is one copy into warm pages (about 15 ms per 100 MB) instead of a
copy into pages the kernel must first find and zero (50 ms and up).

Whether a cache offers it is asked once per client, and only of a cache on a
loopback address.  The reply must name a directory holding the token the
server wrote, which proves the two share the file system.  Any other answer
(Flame's own cache refuses the action) keeps the client on Flight.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import mmap
import os
import re
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
POOL_DIR = "free"
"""The subdirectory where the server keeps dropped objects' files for reuse."""
RECYCLE_MIN_BYTES = 1024 * 1024
"""Smaller files are not worth reusing: fresh memory costs little at that size."""
CLAIM_TRIES = 3
"""Pooled files a write tries before it makes a new one."""
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_FREE_NAME = re.compile(r"[0-9a-f]{32}\.free")
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
        """Write ``payload`` to a file here; returns its name (for LOCAL_PUT)."""
        return self._write([memoryview(payload)])

    def write_value(self, obj: Any) -> str | None:
        """Encode ``obj`` straight into a file, for the values whose encoding is
        their own memory plus a few bytes around it: ``bytes`` (``FLM\\0`` and a
        pickle holding one BINBYTES8) and numeric numpy arrays (``FLM\\1`` and an
        Arrow tensor).  The value's memory is copied once into the file; None for
        any other value."""
        if type(obj) is bytes:
            head = MAGIC_PICKLE + _PICKLE_BYTES8 + struct.pack("<Q", len(obj))
            return self._write([head, memoryview(obj), _PICKLE_STOP])
        tensor = tensor_of(obj)
        if tensor is None:
            return None
        size = len(MAGIC_TENSOR) + pa.ipc.get_tensor_size(tensor)

        def fill(fd: int, reused: bool) -> None:
            # Through the descriptor we created or claimed (O_NOFOLLOW), not the name.
            if reused:
                # Into the file's own pages ("wb" would truncate them away), through
                # a mapping whose page tables are filled at once (MAP_POPULATE)
                # rather than by a write fault per page: half the time.
                os.ftruncate(fd, size)
                mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _MAP_POPULATE)
                try:
                    sink = pa.FixedSizeBufferWriter(pa.py_buffer(mapping))
                    sink.write(MAGIC_TENSOR)
                    pa.ipc.write_tensor(tensor, sink)
                    sink.close()
                    del sink  # releases the export, so the mapping can close
                finally:
                    mapping.close()
                return
            with pa.OSFile(f"/proc/self/fd/{fd}", "wb") as sink:
                sink.write(MAGIC_TENSOR)
                pa.ipc.write_tensor(tensor, sink)

        return self._store(size, fill)

    def _write(self, pieces: list[bytes | memoryview]) -> str:
        views = [memoryview(piece).cast("B") for piece in pieces]
        size = sum(len(view) for view in views)

        def fill(fd: int, reused: bool) -> None:
            if reused:
                os.ftruncate(fd, size)
            offset = 0
            for view in views:
                written = 0
                while written < len(view):
                    written += os.pwrite(fd, view[written:], offset + written)
                offset += len(view)

        return self._store(size, fill)

    def _store(self, size: int, fill: Callable[[int, bool], None]) -> str:
        """A file holding ``size`` bytes written by ``fill(fd, reused)``: a pooled
        one when one is free, else a new one."""
        claimed = self._claim(size) if size >= RECYCLE_MIN_BYTES else None
        if claimed is not None:
            fd, name = claimed
        else:
            name = f"{uuid.uuid4().hex}.part"
            fd = os.open(
                self.path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
            )
        try:
            fill(fd, claimed is not None)
        except BaseException:
            (self.path / name).unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return name

    def _claim(self, size: int) -> tuple[int, str] | None:
        """A pooled file renamed to a new upload name and open for writing, once a
        write lease showed that nobody else has it open or mapped; None if none is."""
        pool = self.path / POOL_DIR
        try:
            entries = [(e.stat(follow_symlinks=False).st_size, e.name) for e in os.scandir(pool)]
        except OSError:
            return None
        # The smallest file that holds the payload, else the largest smaller one.
        entries = [e for e in entries if _FREE_NAME.fullmatch(e[1])]
        fitting = sorted(e for e in entries if e[0] >= size)
        short = sorted((e for e in entries if e[0] < size), reverse=True)
        for _, free in (fitting + short)[:CLAIM_TRIES]:
            name = f"{uuid.uuid4().hex}.part"
            path = self.path / name
            try:
                os.rename(pool / free, path)  # ours now; no one else can claim it
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # another client was first
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.getuid():
                os.close(fd)
                path.unlink(missing_ok=True)
                continue
            unused = _unused(fd)
            if unused:
                return fd, name
            os.close(fd)
            if unused is None:  # no leases here: the pool cannot be used safely
                path.unlink(missing_ok=True)
                continue
            try:  # still mapped by a reader: back to the pool for a later write
                os.rename(path, pool / f"{uuid.uuid4().hex}.free")
            except OSError:
                path.unlink(missing_ok=True)
        return None

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


def _unused(fd: int) -> bool | None:
    """Whether no other descriptor or mapping of ``fd``'s file exists anywhere: a
    write lease is granted only then (Linux counts a mapping as an open file).
    None when this file system or kernel grants no leases at all."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            return False
        return None
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


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


__all__ = [
    "LOCAL_MIN_BYTES",
    "POOL_DIR",
    "RECYCLE_MIN_BYTES",
    "TransferDir",
    "direct_size",
    "is_loopback",
    "map_file",
]
