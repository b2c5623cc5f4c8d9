"""Copying a large payload into a new ``bytes`` object on two cores.

A ``bytes`` value read from the cache must end up in memory of its own, and for
a large one the cost is not the copy but the first touch of that fresh memory:
every page faults in.  The kernel serves faults of one process on several cores
at once, so two threads that each copy half (through ``memmove``, which ctypes
calls without the GIL) take about 60 % of the time one thread takes.

The new object is made the way C code makes one it fills itself
(``PyBytes_FromStringAndSize(NULL, n)``, then its buffer is written before any
Python code can see it), so no zero-filled copy is made first.

Before the copy, the new buffer is offered transparent huge pages
(``madvise(MADV_HUGEPAGE)``; Linux's default THP mode, ``madvise``, uses them
only where asked), so the kernel faults it in 2 MiB at a time instead of 4 KiB:
100 MB into fresh memory took 35-60 ms here with small pages, 12-15 ms with huge
ones.  Where the advice is not available (another OS, THP off) the copy is the
same, only slower.  Fresh pages the virtual machine's host has taken back still
cost 120-200 ms per 100 MB either way, so before its first large copy the
process starts keeping freed memory (:mod:`flamepy._cache.memory`): the next large
value then lands in pages it already has.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import sys
import threading
from collections.abc import Callable

from flamepy._cache.memory import keep_for_large_values, libc

PARALLEL_MIN = 8 * 1024 * 1024
"""Payloads at least this big are copied by two threads."""
_PAGE = 4096

_api = ctypes.pythonapi
_new_bytes = _api.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_bytes_address = _api.PyBytes_AsString
_bytes_address.restype = ctypes.c_void_p
_bytes_address.argtypes = [ctypes.py_object]

_MADV_HUGEPAGE = 14  # Linux


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    advise = getattr(libc(), "madvise", None)
    if advise is None:
        return None
    advise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advise.restype = ctypes.c_int
    return advise  # type: ignore[no-any-return]


def advise_huge_pages(address: int, size: int) -> bool:
    """Ask for transparent huge pages over the whole pages of ``[address, address +
    size)`` (memory nothing has touched yet, so the advice applies as it faults in);
    whether the kernel took the advice."""
    start = (address + _PAGE - 1) & ~(_PAGE - 1)
    end = (address + size) & ~(_PAGE - 1)
    advise = _madvise()
    if advise is None or end <= start:
        return False
    return advise(start, end - start, _MADV_HUGEPAGE) == 0


_lock = threading.Lock()
_helper: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _helper
    with _lock:
        if _helper is None:
            _helper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flamepy-copy")
        return _helper


def copy_into(dst: int, src: int, size: int) -> None:
    """Copy ``size`` bytes from address ``src`` to ``dst`` (both kept alive by the
    caller), on two threads when it is large."""
    if size < PARALLEL_MIN:
        ctypes.memmove(dst, src, size)
        return
    half = (size // 2) & ~(_PAGE - 1)
    other = _pool().submit(ctypes.memmove, dst + half, src + half, size - half)
    try:
        ctypes.memmove(dst, src, half)
    finally:
        other.result()  # never return while the helper still copies


def bytes_at(address: int, size: int) -> bytes:
    """A new ``bytes`` holding the ``size`` bytes at ``address`` (which the caller
    keeps alive and unchanged until this returns)."""
    if size >= PARALLEL_MIN:
        keep_for_large_values()  # before the allocation, so that it comes from the heap
    out: bytes = _new_bytes(None, size)
    if size:
        target = _bytes_address(out)
        if size >= PARALLEL_MIN:
            advise_huge_pages(target, size)
        copy_into(target, address, size)
    return out
