"""Keeping freed memory in a client process, so that large values land in warm pages.

glibc serves every allocation over 32 MiB with a fresh ``mmap`` and returns it
to the kernel on free.  A client that fetches a 100 MB ``bytes`` result again
and again then pays, every time, for the kernel to fault in and zero 25,000 new
pages: 35-60 ms per 100 MB here, and 120-200 ms on a virtual machine whose host
has taken the freed pages back (as a balloon with free page reporting does).
Copying into memory the process already has costs 8-12 ms.

:func:`keep_for_large_values` asks glibc (``mallopt``) to take large blocks from
the heap rather than ``mmap``, and to keep up to ``FLAME_HEAP_KEEP`` bytes of
freed memory at the heap's top instead of returning it.  The allocator is the
user's: this is **opt-in** (set ``FLAME_HEAP_KEEP``, e.g. ``1073741824``; unset or
``0`` leaves glibc's defaults), as a library must not change its host process
globally unasked.  It runs the first time the process decodes a large value (a
``bytes`` of at least :data:`flamepy._cache.copying.PARALLEL_MIN` bytes), so a process that
never fetches one is never changed.  flmrun's instances, which are our own
processes, keep freed memory by default (``flmrun._memory``).  How the process's threads
pick malloc arenas is left alone (the instance process, ``flmrun._memory``,
also makes them share one).  The resident size then stays near its high-water
mark up to the bound, as it would with jemalloc or tcmalloc.  Other C libraries
are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading

logger = logging.getLogger("flamepy.memory")

CLIENT_HEAP_KEEP_ENV = "FLAME_HEAP_KEEP"
DEFAULT_HEAP_KEEP = 1 << 30
"""Freed bytes the heap may keep (glibc's M_TRIM_THRESHOLD); 1 GiB."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_lock = threading.Lock()
_applied: bool | None = None
"""None until this process chose a policy; then whether glibc took it."""


def heap_keep_from_env(name: str, value: str | None) -> int:
    """The bound the environment variable ``name`` (set to ``value``) asks for;
    a clear ValueError for a bad value."""
    if value is None or value.strip() == "":
        return DEFAULT_HEAP_KEEP
    try:
        keep = int(value)
    except ValueError:
        raise ValueError(
            f"{name} is {value!r}: give a number of bytes, or 0 to keep glibc's defaults"
        ) from None
    if keep < 0:
        raise ValueError(f"{name} is {value!r}: it cannot be negative")
    return keep


def policy_chosen(applied: bool) -> None:
    """Record that this process already chose its policy (``flmrun`` does, at start)."""
    global _applied
    with _lock:
        _applied = applied


def keep_freed_memory(keep: int) -> bool:
    """Apply the policy (see the module doc); whether this C library took it.

    The first call in a process (or :func:`policy_chosen`) decides; later calls
    return its answer."""
    global _applied
    with _lock:
        if _applied is None:
            _applied = _mallopt(keep)
        return _applied


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, loaded the first time something needs it (not at import:
    ``find_library`` takes a few milliseconds); None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _mallopt(keep: int) -> bool:
    if keep <= 0:
        return False
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:
        logger.debug("no mallopt here: freed memory is managed by the C library's defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, min(keep, 2**31 - 1)))


def keep_for_large_values() -> None:
    """The client's policy, applied once, before its first large value is decoded:
    only when ``FLAME_HEAP_KEEP`` asks for it (opt-in).

    A bad ``FLAME_HEAP_KEEP`` is logged and glibc's defaults are kept: a fetch
    does not fail over a tuning knob."""
    if _applied is not None:
        return
    raw = os.environ.get(CLIENT_HEAP_KEEP_ENV)
    if raw is None or not raw.strip():
        policy_chosen(False)  # not asked: the allocator stays the user's
        return
    try:
        keep = heap_keep_from_env(CLIENT_HEAP_KEEP_ENV, raw)
    except ValueError as exc:
        logger.warning("%s; glibc's defaults are kept", exc)
        keep = 0
    if keep_freed_memory(keep):
        logger.info(
            "keeping up to %d bytes of freed memory for large values (%s=0 turns this off)",
            keep,
            CLIENT_HEAP_KEEP_ENV,
        )
