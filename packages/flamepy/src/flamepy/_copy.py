"""Copying a large payload into a new ``bytes`` object on two cores.

A ``bytes`` value read from the cache must end up in memory of its own, and for
a large one the cost is not the copy but the first touch of that fresh memory:
every page faults in.  The kernel serves faults of one process on several cores
at once, so two threads that each copy half (through ``memmove``, which ctypes
calls without the GIL) take about 60 % of the time one thread takes.

The new object is made the way C code makes one it fills itself
(``PyBytes_FromStringAndSize(NULL, n)``, then its buffer is written before any
Python code can see it), so no zero-filled copy is made first.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import threading

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
    out: bytes = _new_bytes(None, size)
    if size:
        copy_into(_bytes_address(out), address, size)
    return out
