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
the payload is one copy into warm pages instead of a copy into pages the kernel
must first find and zero (50 ms and up per 100 MB).  A writer also keeps its
own mapping of the files it wrote (``_cache.maps``; the lease is asked on the
file that mapping holds, so it still proves nobody else has it): writing into
one again is a plain two-core copy, about 9 ms per 100 MB here, against 20 to
30 ms through a new mapping.

Every file written through a mapping has its whole size reserved first
(``posix_fallocate``).  A page of a file on a full ``tmpfs`` (a 64 MB
``/dev/shm``, Docker's default, fills with one large value) cannot be allocated
when the mapping is written, and the kernel then kills the writer with SIGBUS:
no exception, no traceback.  Reserving turns that into an ``OSError`` before
anything is mapped; the file is removed and the value goes over Flight.

A reader that holds an ObjectRef first tries the name the object's file has
while that version is current (:func:`object_file`), and asks the server
(LOCAL_GET) only when it is missing.

Whether a cache offers it is asked once per client, and only of a cache on a
loopback address.  The reply must name a directory holding the token the
server wrote, which proves the two share the file system.  Any other answer
(Flame's own cache refuses the action) keeps the client on Flight.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import logging
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

from flamepy._cache.codec import MAGIC_PICKLE, MAGIC_TENSOR, tensor_of
from flamepy._cache.copying import PARALLEL_MIN, copy_into
from flamepy._cache.maps import WRITER_MAPS, Mapped, kept_ids

log = logging.getLogger("flamepy.cache")

LOCAL_MIN_BYTES = 64 * 1024
"""Payloads from this size on are handed over as files when the cache offers it."""
TOKEN_FILE = "TOKEN"
POOL_DIR = "free"
"""The subdirectory where the server keeps dropped objects' files for reuse."""
RECYCLE_MIN_BYTES = 1024 * 1024
"""Smaller files are not worth reusing: fresh memory costs little at that size."""
CLAIM_TRIES = 8
"""Pooled files a write tries before it makes a new one (a try costs two renames,
an open and a lease: microseconds, against milliseconds for a new file)."""
COPY_THREADS = 2
"""Threads that copy a large tensor into a reused file's mapping."""
_BLOCK_UNIT = 512
"""``st_blocks`` counts 512-byte units whatever the file system's block size."""
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
        user, 0700: no one else may enter it); else None."""
        if not isinstance(directory, str) or not isinstance(token, str) or not token:
            return None
        path = Path(directory)
        try:
            info = path.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                return None
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
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

        def fill(target: Mapped | None, fd: int) -> None:
            if target is None:  # a small file: written through the descriptor
                with pa.OSFile(f"/proc/self/fd/{fd}", "wb") as sink:
                    sink.write(MAGIC_TENSOR)
                    pa.ipc.write_tensor(tensor, sink)
                return
            buffer = pa.py_buffer(target.mapping)
            sink = pa.FixedSizeBufferWriter(buffer)
            if size >= PARALLEL_MIN:
                sink.set_memcopy_threads(COPY_THREADS)  # Arrow's own threads
            sink.write(MAGIC_TENSOR)
            pa.ipc.write_tensor(tensor, sink)
            sink.close()
            del sink, buffer  # release the export: the mapping stays closable

        return self._store(size, fill)

    def _write(self, pieces: list[bytes | memoryview]) -> str:
        views = [memoryview(piece).cast("B") for piece in pieces]
        size = sum(len(view) for view in views)

        def fill(target: Mapped | None, fd: int) -> None:
            offset = 0
            if target is None:
                for view in views:
                    written = 0
                    while written < len(view):
                        written += os.pwrite(fd, view[written:], offset + written)
                    offset += len(view)
                return
            into = pa.py_buffer(target.mapping)
            try:
                for view in views:
                    source = pa.py_buffer(view)
                    copy_into(into.address + offset, source.address, source.size)
                    offset += source.size
                    del source
            finally:
                del into

        return self._store(size, fill)

    def _store(self, size: int, fill: Callable[[Mapped | None, int], None]) -> str:
        """A file holding ``size`` bytes written by ``fill(mapped, fd)``.

        A small file is new and ``fill`` writes it through ``fd`` (``mapped`` is
        None).  A file worth reusing (``RECYCLE_MIN_BYTES``) is a pooled one when
        one is free, else a new one, and ``fill`` copies into ``mapped``: this
        process keeps it open and mapped afterwards (``_cache.maps``), so writing
        into it again costs only the copy.
        """
        if size < RECYCLE_MIN_BYTES:
            name, fd = self._create(os.O_WRONLY)
            try:
                fill(None, fd)
            except BaseException:
                (self.path / name).unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)
            return name
        WRITER_MAPS.prune()
        claimed = self._claim(size)
        if claimed is not None:
            name, mapped = claimed
        else:
            name, fd = self._create(os.O_RDWR)
            try:
                reserve(fd, size, self.path)
                mapped = Mapped.open(fd, size)
            except BaseException:
                os.close(fd)
                (self.path / name).unlink(missing_ok=True)
                raise
        try:
            fill(mapped, mapped.fd)
        except BaseException:
            mapped.close()
            (self.path / name).unlink(missing_ok=True)
            raise
        WRITER_MAPS.keep(mapped)
        return name

    def _create(self, access: int) -> tuple[str, int]:
        """A new upload file here (never an existing name, never through a link),
        opened with ``access``: its name and descriptor."""
        name = f"{uuid.uuid4().hex}.part"
        flags = access | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        return name, os.open(self.path / name, flags, 0o600)

    def _claim(self, size: int) -> tuple[str, Mapped] | None:
        """A pooled file renamed to a new upload name, open and mapped for writing
        ``size`` bytes, once a write lease showed that nobody else has it open or
        mapped; None if none is."""
        pool = self.path / POOL_DIR
        try:
            found = [(e.name, e.stat(follow_symlinks=False)) for e in os.scandir(pool)]
        except OSError:
            return None
        ours = kept_ids()
        entries = [
            ((info.st_dev, info.st_ino) not in ours, info.st_size, name)
            for name, info in found
            if _FREE_NAME.fullmatch(name)
        ]
        # Files we keep mapped first (no other process can use them), then the
        # smallest file that holds the payload, then the largest smaller ones.
        fitting = sorted(e for e in entries if e[1] >= size)
        short = sorted((e for e in entries if e[1] < size), key=lambda e: (e[0], -e[1]))
        for _, _, free in sorted(fitting + short, key=lambda e: e[0])[:CLAIM_TRIES]:
            name = f"{uuid.uuid4().hex}.part"
            path = self.path / name
            try:
                os.rename(pool / free, path)  # ours now; no one else can claim it
                info = path.lstat()
            except OSError:
                continue  # another client was first
            kept = WRITER_MAPS.take((info.st_dev, info.st_ino))
            if kept is not None:
                fd = kept.fd  # the lease is asked on the file our mapping holds
            else:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    path.unlink(missing_ok=True)
                    continue
            info = os.fstat(fd)
            same = kept is None or kept.file_id == (info.st_dev, info.st_ino)
            if (
                not stat.S_ISREG(info.st_mode)
                or info.st_nlink != 1
                or info.st_uid != os.getuid()
                or not same
            ):
                _let_go(kept, fd)
                path.unlink(missing_ok=True)
                continue
            unused = _unused(fd)
            if unused:
                try:
                    reserve(fd, size, self.path)  # a short file grows: reserve first
                    if kept is None:
                        return name, Mapped.open(fd, size)
                    kept.resize(size)
                    return name, kept
                except BaseException:
                    _let_go(kept, fd)
                    path.unlink(missing_ok=True)
                    raise
            if kept is not None and unused is False:
                WRITER_MAPS.keep(kept)  # a reader still maps it: ours stays for later
            else:
                _let_go(kept, fd)
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

    def has(self, name: str) -> bool:
        """Whether the plain file ``name`` is here now."""
        if not _plain_name(name):
            return False
        try:
            return stat.S_ISREG(os.lstat(self.path / name).st_mode)
        except OSError:
            return False

    def map(self, name: str) -> pa.Buffer | None:
        """The file ``name``, mapped read-only; None when it is gone (the object was
        replaced or deleted meanwhile) or is not a plain file name here."""
        if not _plain_name(name):
            return None
        try:
            return map_file(self.path / name)
        except (OSError, ValueError):
            return None


def _plain_name(name: str) -> bool:
    return "/" not in name and "\0" not in name and name not in ("", ".", "..")


def _let_go(kept: Mapped | None, fd: int) -> None:
    if kept is not None:
        kept.close()
    else:
        os.close(fd)


def reserve(fd: int, size: int, where: Path) -> None:
    """Allocate the first ``size`` bytes of ``fd``'s file now (``posix_fallocate``).

    Writing through a shared mapping into a page the file system cannot supply
    (a full ``tmpfs``) is SIGBUS, which kills the process; a failed reservation is
    an ``OSError`` (ENOSPC, EFBIG, EOPNOTSUPP, ...) the caller turns into "use
    Flight".  The file keeps its length; a longer one is not shortened.  A file
    that already has a block for every byte (a reused one, written in full
    before) is left alone: asking again costs 3-4 ms per 100 MB on tmpfs, a third
    of the copy it precedes."""
    info = os.fstat(fd)
    if info.st_size >= size and info.st_blocks * _BLOCK_UNIT >= info.st_size:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        log.debug(
            "cannot reserve %d bytes for a transfer file in %s (%s); the value goes over Flight",
            size,
            where,
            exc,
        )
        raise


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


def object_file(key: str, version: int) -> str:
    """The name under which a cache with a transfer directory holds the file of
    the object at ``key``, version ``version``, while that object is the key's
    current one and has no patches.  A reader on the host that knows both (an
    ObjectRef does) maps it without asking the server; when the name is missing
    it asks (LOCAL_GET)."""
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{digest}-{version}.obj"


def direct_size(obj: Any) -> int:
    """The size of a value :meth:`TransferDir.write_value` writes directly, else 0."""
    if type(obj) is bytes:
        return len(obj)
    if type(obj).__name__ == "ndarray" and type(obj).__module__ == "numpy":
        return int(obj.nbytes)
    return 0


def is_loopback(endpoint: str) -> bool:
    """Whether the cache endpoint is on this machine: a Unix socket or a loopback host."""
    if endpoint.lower().startswith("grpc+unix:"):
        return True
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
    "object_file",
]
