"""One local cluster per process, started on demand for flamepy's embedded default."""

from __future__ import annotations

import atexit
import os
import sys
import threading

from flame_testkit._cluster import ClusterThread, LocalClusterConfig
from flame_testkit._errors import ClusterConfigError
from flame_testkit._executor import DEFAULT_CAPACITY
from flame_testkit.dashboard import DASHBOARD_ENV
from flamepy._config import env_switch
from flamepy._loop import background_loop

_lock = threading.Lock()
_cluster: ClusterThread | None = None

EMBEDDED_DELAY_RELEASE = 5
"""Idle instances of the embedded cluster are released after 5 s, not 60 s."""
EMBEDDED_KILL_GRACE = 2.0
"""At the program's exit, an instance still busy gets 2 s after SIGTERM, then SIGKILL."""
CAPACITY_ENV = "FLAME_LOCAL_CAPACITY"
"""How many instances the embedded cluster runs at once (default: the CPU count)."""


def embedded_capacity() -> int:
    raw = (os.environ.get(CAPACITY_ENV) or "").strip()
    if not raw:
        return DEFAULT_CAPACITY
    try:
        capacity = int(raw)
    except ValueError:
        capacity = 0
    if capacity < 1:
        raise ClusterConfigError(
            f"{CAPACITY_ENV}={raw!r}: give the number of instances the embedded cluster may "
            "run at once, a whole number of 1 or more"
        )
    return capacity


# Everything here runs on one machine: the cluster runs on flamepy's background loop,
# flamepy calls the Frontend in-process, clients hand large payloads to the cache as
# files on /dev/shm, and the cache sends its replies uncompressed (compressing for
# the loopback interface only costs CPU; every IPC reader accepts both).


def embedded_cluster(capacity: int | None = None) -> ClusterThread:
    """The process-wide local cluster, started on first use and stopped at exit.

    ``capacity`` (instances at once) applies when this call starts it; None means
    ``FLAME_LOCAL_CAPACITY``, else the CPU count."""
    global _cluster
    if _cluster is None:
        with _lock:
            if _cluster is None:
                shared = background_loop()  # stopped at exit after the cluster (LIFO)
                cluster = ClusterThread(
                    LocalClusterConfig(
                        capacity=capacity if capacity is not None else embedded_capacity(),
                        delay_release=EMBEDDED_DELAY_RELEASE,
                        kill_grace=EMBEDDED_KILL_GRACE,
                        in_process=True,
                        cache_compression=None,
                        cache_local_transfer=True,
                        dashboard=env_switch(DASHBOARD_ENV, default=False),
                    ),
                    loop=shared.loop,
                )
                cluster.start()
                if cluster.dashboard_url is not None:
                    print(f"flame dashboard: {cluster.dashboard_url}", file=sys.stderr, flush=True)
                atexit.register(_stop)
                _cluster = cluster
    return _cluster


def _stop() -> None:
    global _cluster
    cluster, _cluster = _cluster, None
    if cluster is not None:
        cluster.stop()
