"""Benchmark process for Flame: ``flamepy.Runner`` on the embedded local cluster.

Run by ``bench/run.py`` with no FLAME_ENDPOINT / FLAME_CACHE_ENDPOINT, HOME set to
an empty directory and the working directory set to a small temporary project, so
that the Runner starts flame-testkit's embedded cluster (capacity = CPU count) and
packages that project.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import contextlib  # noqa: E402
import os  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import _workloads  # noqa: E402
from _common import main  # noqa: E402


class FlameAdapter:
    """Calls through one ``flamepy.Runner``; each function or object is one service."""

    def __init__(self) -> None:
        start = time.perf_counter()
        import cloudpickle

        import flamepy

        imported = time.perf_counter()
        cloudpickle.register_pickle_by_value(_workloads)
        self._stack = contextlib.ExitStack()
        self._runner = self._stack.enter_context(flamepy.Runner(f"bench-{os.getpid()}"))
        self.phases = {"import": imported - start, "runner": time.perf_counter() - imported}

    def function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return self._runner.service(fn)

    def actor(self, cls: type, method: str) -> Callable[..., Any]:
        return getattr(self._runner.service(cls()), method)  # type: ignore[no-any-return]

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout)

    def gather(self, handles: list[Any], timeout: float) -> list[Any]:
        return self._runner.get(handles, timeout)

    def close(self) -> None:
        self._stack.close()  # the Runner's context exit


if __name__ == "__main__":
    main(FlameAdapter, T0)
