"""Keeping freed memory in the instance process, so large buffers are reused warm.

glibc serves every allocation over 32 MiB with a fresh ``mmap`` and returns it
to the kernel on free.  An instance that receives or builds a 100 MB payload per
task then pays, every task, for the kernel to fault in and zero 25,000 new
pages: about 40 ms per 100 MB on a quiet machine, and ten times that on a
virtual machine whose host has taken the pages back.  Copying into memory the
process already touched costs 7-9 ms.

So :func:`keep_freed_memory` asks glibc (``mallopt``) to take large blocks from
the heap rather than ``mmap``, to keep up to :data:`DEFAULT_HEAP_KEEP` bytes of
freed memory at the heap's top instead of returning it, and to use one arena
for all threads (a thread's own arena holds at most 64 MiB and falls back to
``mmap`` for anything larger; tasks run on the task stream's thread).  Python's
small objects have their own allocator, so the one arena sees little traffic.  The instance's
resident size then stays near its high-water mark (up to that bound), as a
worker that reuses its arena does.  ``FLMRUN_HEAP_KEEP`` sets the bound in
bytes; ``0`` leaves glibc's defaults.  Other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger("flmrun.memory")

HEAP_KEEP_ENV = "FLMRUN_HEAP_KEEP"
DEFAULT_HEAP_KEEP = 1 << 30
"""Freed bytes the heap may keep (glibc's M_TRIM_THRESHOLD); 1 GiB."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def heap_keep_from_env(value: str | None) -> int:
    """The bound ``FLMRUN_HEAP_KEEP`` asks for; a clear error for a bad value."""
    if value is None or value.strip() == "":
        return DEFAULT_HEAP_KEEP
    try:
        keep = int(value)
    except ValueError:
        raise ValueError(
            f"{HEAP_KEEP_ENV} is {value!r}: give a number of bytes, or 0 to keep glibc's defaults"
        ) from None
    if keep < 0:
        raise ValueError(f"{HEAP_KEEP_ENV} is {value!r}: it cannot be negative")
    return keep


def keep_freed_memory(keep: int) -> bool:
    """Apply the policy (see the module doc); whether this C library took it."""
    if keep <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("no mallopt here: freed memory is managed by the C library's defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    keep = min(keep, 2**31 - 1)  # mallopt takes an int
    done = all(
        mallopt(option, value)
        for option, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, keep))
    )
    if done:
        logger.debug("large blocks come from the heap; up to %d freed bytes are kept", keep)
    return done


def apply_from_env() -> bool:
    """:func:`keep_freed_memory` with the bound from the environment.

    This module imports nothing of flamepy: importing the ``flamepy`` package
    starts threads (gRPC, Arrow), and glibc fixes its arena limit when the first
    thread arena is made, so ``M_ARENA_MAX`` must come first.  flamepy's own
    client-side policy (``flamepy._cache.memory``) is then told that the process has
    chosen, so that it does not apply ``FLAME_HEAP_KEEP`` over this."""
    applied = keep_freed_memory(heap_keep_from_env(os.environ.get(HEAP_KEEP_ENV)))
    from flamepy._cache.memory import policy_chosen

    policy_chosen(applied)
    return applied
