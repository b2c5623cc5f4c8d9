"""Transfer files this process wrote, kept open and mapped for its next write.

Writing 100 MB into a reused transfer file through a fresh mapping is three
steps: building the page tables (``MAP_POPULATE``, ~9 ms here), the copy
(~8 ms on two cores) and tearing the tables down at ``munmap`` (~4 ms).  A
writer that keeps its mapping of the file pays only the copy the next time.

Keeping the mapping must not weaken the reuse check (``_cache_local._unused``):
a write lease is granted only when the file's open files are the lease taker's
own.  The mapping holds the very file the lease is asked on (the descriptor that
made it, kept open), so the lease still proves that no other process, and no
other mapping of ours, has the file: a reader's mapping is its own open file and
makes the lease fail, as before.

A kept file is useless to every other process (their lease fails on it), so a
claim tries the files its own process keeps first (``_cache.local``): a client
that passes big arguments and an instance that returns big results each find
their own.  A kept file waiting in the pool holds no memory the pool would not
hold anyway.  What is kept is bounded (:data:`MAX_FILES`, :data:`MAX_BYTES`),
a file that lost its name (the server dropped it for good) is let go at the
next write or client close, and :func:`keep_mappings` changes the bounds
(``0`` turns keeping off).  A forked child drops what it inherited.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

MAX_FILES = 4
"""Files kept mapped per process at most, once keeping is on."""
MAX_BYTES = 512 * 1024 * 1024
"""Bytes kept mapped per process at most."""
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

FileId = tuple[int, int]
"""(st_dev, st_ino)"""


@dataclass
class Mapped:
    """A transfer file open for writing, with its whole length mapped."""

    fd: int
    mapping: mmap.mmap
    size: int
    file_id: FileId

    @classmethod
    def open(cls, fd: int, size: int) -> Mapped:
        """Map ``size`` bytes of ``fd`` (the file is made that long first); the
        pages are faulted in now, not one by one during the copy."""
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | MAP_POPULATE)
        info = os.fstat(fd)
        return cls(fd, mapping, size, (info.st_dev, info.st_ino))

    def resize(self, size: int) -> None:
        """Make the file (and the mapping) ``size`` bytes long."""
        if size != self.size:
            self.mapping.close()
            os.ftruncate(self.fd, size)
            self.mapping = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | MAP_POPULATE)
            self.size = size

    def named(self) -> bool:
        """Whether the file still has a name (else it is garbage held only by us)."""
        try:
            return os.fstat(self.fd).st_nlink > 0
        except OSError:
            return False

    def close(self) -> None:
        with contextlib.suppress(BufferError, OSError):
            self.mapping.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class WriterMaps:
    """The files kept mapped, least recently written first; thread-safe.  A file
    is *taken* out while one write uses it, so two writes never share one."""

    def __init__(self, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[FileId, Mapped] = OrderedDict()

    def take(self, file_id: FileId) -> Mapped | None:
        with self._lock:
            return self._kept.pop(file_id, None)

    def keep(self, mapped: Mapped) -> None:
        """Keep ``mapped`` for a later write, within the bounds (the oldest go)."""
        if mapped.size > self.max_bytes or self.max_files <= 0:
            mapped.close()
            return
        evicted = []
        with self._lock:
            old = self._kept.pop(mapped.file_id, None)
            if old is not None and old is not mapped:
                evicted.append(old)
            self._kept[mapped.file_id] = mapped
            total = sum(m.size for m in self._kept.values())
            while len(self._kept) > self.max_files or total > self.max_bytes:
                _, oldest = self._kept.popitem(last=False)
                total -= oldest.size
                evicted.append(oldest)
        for gone in evicted:
            gone.close()

    def prune(self) -> None:
        """Let go of the files that lost their name."""
        with self._lock:
            dead = [key for key, m in self._kept.items() if not m.named()]
            gone = [self._kept.pop(key) for key in dead]
        for mapped in gone:
            mapped.close()

    def clear(self) -> None:
        with self._lock:
            gone = list(self._kept.values())
            self._kept.clear()
        for mapped in gone:
            mapped.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)


WRITER_MAPS = WriterMaps()
"""This process's kept files."""


def keep_mappings(max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> None:
    """Keep up to ``max_files`` files (``max_bytes`` in all) this process writes
    mapped for its next writes; ``max_files=0`` turns keeping off."""
    if max_files < 0 or max_bytes < 0:
        raise ValueError("max_files and max_bytes must be >= 0")
    WRITER_MAPS.max_files = max_files
    WRITER_MAPS.max_bytes = max_bytes
    if max_files == 0:
        WRITER_MAPS.clear()


def kept_ids() -> set[FileId]:
    """The files this process keeps mapped."""
    with WRITER_MAPS._lock:
        return set(WRITER_MAPS._kept)


def _forget_after_fork() -> None:
    # The child shares the parent's open files: it unmaps and closes its copies,
    # so that it never writes into a file through what the parent kept.
    WRITER_MAPS._lock = threading.Lock()  # the parent's may have been held at fork
    WRITER_MAPS.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
