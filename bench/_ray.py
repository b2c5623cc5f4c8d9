"""Benchmark process for Ray: a local Ray instance with 2 CPUs on 127.0.0.1.

``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough: Ray resolves a
loopback node address to the machine's reachable IP and its gRPC servers listen
on every interface.  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray use loopback
as the node address, and then every Ray server binds 127.0.0.1.
"""

from __future__ import annotations

import os
import time

T0 = time.perf_counter()

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import _workloads  # noqa: E402
from _common import main  # noqa: E402


class RayAdapter:
    """Remote functions and actors of one ``ray.init`` session."""

    def __init__(self) -> None:
        start = time.perf_counter()
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only, see above
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray
        import ray.cloudpickle

        imported = time.perf_counter()
        ray.cloudpickle.register_pickle_by_value(_workloads)
        ray.init(
            num_cpus=2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
        )
        self._ray = ray
        self.phases = {"import": imported - start, "init": time.perf_counter() - imported}

    def function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return self._ray.remote(fn).remote  # type: ignore[no-any-return]

    def actor(self, cls: type, method: str) -> Callable[..., Any]:
        handle = self._ray.remote(cls).remote()
        return getattr(handle, method).remote  # type: ignore[no-any-return]

    def get(self, handle: Any, timeout: float) -> Any:
        return self._ray.get(handle, timeout=timeout)

    def gather(self, handles: list[Any], timeout: float) -> list[Any]:
        return self._ray.get(handles, timeout=timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._ray.shutdown()


if __name__ == "__main__":
    main(RayAdapter, T0)
