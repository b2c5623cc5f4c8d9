"""pytest fixtures for a local Flame cluster (registered through ``pytest11``).

* ``flame_cluster``: one local cluster for the test session; at teardown it fails
  if any instance process it launched is still alive.
* ``flame_endpoint``: that cluster's Frontend URL.
* ``flame_env``: sets FLAME_ENDPOINT (and FLAME_CACHE_ENDPOINT, and the token file
  of a TCP cluster) for one test.

The cluster is owner-only: it serves on Unix sockets in a 0700 directory unless
``flame_cluster_config`` asks for TCP, which then requires a token.
* ``flame_connection``: a flamepy ``Connection`` to the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flame_testkit._cluster import ClusterThread, LocalClusterConfig
from flame_testkit._executor import DEFAULT_CAPACITY

TEST_DELAY_RELEASE = 2
"""Idle instances of the test cluster are released after 2 s."""


@pytest.fixture(scope="session")
def flame_cluster_config() -> LocalClusterConfig:
    """Override in a conftest.py to configure :func:`flame_cluster`."""
    return LocalClusterConfig(
        delay_release=TEST_DELAY_RELEASE,
        kill_grace=2.0,
        capacity=max(2, DEFAULT_CAPACITY),
        cache_local_transfer=True,  # as the embedded cluster
    )


@pytest.fixture(scope="session")
def flame_cluster(flame_cluster_config: LocalClusterConfig) -> Iterator[ClusterThread]:
    cluster = ClusterThread(flame_cluster_config).start()
    try:
        yield cluster
    finally:
        cluster.stop()
    leftovers = cluster.leftover_processes()
    if leftovers:
        pytest.fail(f"instance processes outlived the local cluster: process groups {leftovers}")


@pytest.fixture(scope="session")
def flame_endpoint(flame_cluster: ClusterThread) -> str:
    return flame_cluster.endpoint


@pytest.fixture
def flame_env(flame_cluster: ClusterThread, monkeypatch: pytest.MonkeyPatch) -> ClusterThread:
    wanted = flame_cluster.client_env({})
    for key in ("FLAME_TOKEN", "FLAME_TOKEN_FILE", "FLAME_CA_FILE"):
        if key not in wanted:
            monkeypatch.delenv(key, raising=False)
    for key, value in wanted.items():
        monkeypatch.setenv(key, value)
    return flame_cluster


@pytest.fixture(scope="session")
def flame_connection(flame_endpoint: str) -> Iterator[object]:
    from flamepy import Connection

    conn = Connection.connect(flame_endpoint)
    try:
        yield conn
    finally:
        conn.close()
