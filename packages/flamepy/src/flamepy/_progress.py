"""Progress bars on a terminal: packaging, uploading, and waits on many calls.

Shown only when stderr is a terminal, tqdm is installed (``flamepy[progress]``)
and ``FLAME_PROGRESS`` is not ``0``/``off``/``false``; otherwise every function
here does nothing, so piped output and logs stay clean.  tqdm is a well-kept
library that handles terminal widths, rates and redraws; flamepy does not
depend on it.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Any

from flamepy._config import env_switch

PROGRESS_ENV = "FLAME_PROGRESS"
MIN_CALLS = 100
"""A wait on at least this many calls shows a bar."""
MIN_BYTES = 16 * 1024 * 1024
"""Packaging or uploading at least this many bytes shows a bar."""


def enabled() -> bool:
    if not env_switch(PROGRESS_ENV, default=True):
        return False
    try:
        if not sys.stderr.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class Bar:
    """One bar; ``set`` and ``add`` may be called from any thread."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        from tqdm import tqdm

        scale = unit == "B"
        self._bar: Any = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=scale,
            unit_divisor=1024 if scale else 1000,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self._lock = threading.Lock()

    def set(self, done: int) -> None:
        with self._lock:
            self._bar.update(max(0, done - self._bar.n))

    def add(self, amount: int) -> None:
        with self._lock:
            self._bar.update(amount)

    def close(self) -> None:
        with self._lock:
            self._bar.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def bar(total: int, desc: str, unit: str = "it", minimum: int = 0) -> Bar | None:
    """A bar for ``total`` units, or None (not a terminal, off, no tqdm, or less
    than ``minimum``)."""
    if total < minimum or total <= 0 or not enabled():
        return None
    return Bar(total, desc, unit)


__all__ = ["MIN_BYTES", "MIN_CALLS", "PROGRESS_ENV", "Bar", "bar", "enabled"]
