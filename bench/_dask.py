"""Benchmark process for Dask: ``distributed.LocalCluster`` (2 workers x 1 thread)."""

from __future__ import annotations

import time

T0 = time.perf_counter()

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import _workloads  # noqa: E402
from _common import main  # noqa: E402


class DaskAdapter:
    """Futures (``submit(pure=False)``) and actors (``actor=True``) of one Client."""

    def __init__(self) -> None:
        start = time.perf_counter()
        import cloudpickle
        import dask
        import distributed

        imported = time.perf_counter()
        cloudpickle.register_pickle_by_value(_workloads)
        self._distributed = distributed
        # With 100k tasks in flight the scheduler's loop can be busy for longer than
        # the default 30 s comm timeout, and the client then drops its connection.
        dask.config.set({"distributed.comm.timeouts.tcp": "600s"})
        self._cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        )
        self._client = distributed.Client(self._cluster)
        self.phases = {"import": imported - start, "cluster": time.perf_counter() - imported}

    def function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        submit = self._client.submit

        def call(*args: Any) -> Any:
            return submit(fn, *args, pure=False)

        return call

    def actor(self, cls: type, method: str) -> Callable[..., Any]:
        handle = self._client.submit(cls, actor=True).result(timeout=60)
        return getattr(handle, method)  # type: ignore[no-any-return]

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout=timeout)

    def gather(self, handles: list[Any], timeout: float) -> list[Any]:
        if handles and isinstance(handles[0], self._distributed.Future):
            self._distributed.wait(handles, timeout=timeout)
            return self._client.gather(handles)  # type: ignore[no-any-return]
        return [h.result(timeout=timeout) for h in handles]  # actor futures

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            self._cluster.close()


if __name__ == "__main__":
    main(DaskAdapter, T0)
