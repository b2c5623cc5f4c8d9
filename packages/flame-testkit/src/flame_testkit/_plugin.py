"""pytest fixtures for a Flame cluster (registered through ``pytest11``).

* ``flame_cluster``: one local cluster for the test session; at teardown it fails
  if any instance process it launched is still alive.  With ``FLAME_TEST_ENDPOINT``
  set (and ``FLAME_TEST_CACHE_ENDPOINT``, and the usual ``FLAME_TOKEN_FILE`` or
  ``FLAME_CA_FILE`` where needed), it is that cluster instead, a real one or a
  ``flame-local up`` elsewhere, and nothing is started: the same tests run against
  the fake and against a real cluster.
* ``flame_cluster_config``: the local cluster's settings; override it in a
  conftest.py.
* ``flame_endpoint``: that cluster's Frontend URL.
* ``flame_env``: sets FLAME_ENDPOINT (and FLAME_CACHE_ENDPOINT, and the token file
  of a TCP cluster) for one test.
* ``flame_connection``: a flamepy ``Connection`` to the cluster.

The local cluster is owner-only: it serves on Unix sockets in a 0700 directory
unless ``flame_cluster_config`` asks for TCP, which then requires a token.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flame_testkit._cluster import ClusterThread, LocalClusterConfig
from flame_testkit._executor import DEFAULT_CAPACITY
from flame_testkit._remote import PASSED_ON, RemoteCluster

TEST_DELAY_RELEASE = 2
"""Idle instances of the test cluster are released after 2 s."""


def testing_cluster_config(**changes: object) -> LocalClusterConfig:
    """The fixtures' local cluster settings, with ``changes`` (for a conftest.py's
    own ``flame_cluster_config``)."""
    settings: dict[str, object] = {
        "delay_release": TEST_DELAY_RELEASE,
        "kill_grace": 2.0,
        "capacity": max(2, DEFAULT_CAPACITY),
        "cache_local_transfer": True,  # as the embedded cluster
        **changes,
    }
    return LocalClusterConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def flame_cluster_config() -> LocalClusterConfig:
    """Override in a conftest.py to configure :func:`flame_cluster`."""
    return testing_cluster_config()


@pytest.fixture(scope="session")
def flame_cluster(
    flame_cluster_config: LocalClusterConfig,
) -> Iterator[ClusterThread | RemoteCluster]:
    remote = RemoteCluster.from_env()
    if remote is not None:
        yield remote
        return
    cluster = ClusterThread(flame_cluster_config).start()
    try:
        yield cluster
    finally:
        cluster.stop()
    leftovers = cluster.leftover_processes()
    if leftovers:
        pytest.fail(f"instance processes outlived the local cluster: process groups {leftovers}")


@pytest.fixture(scope="session")
def flame_endpoint(flame_cluster: ClusterThread | RemoteCluster) -> str:
    return flame_cluster.endpoint


@pytest.fixture
def flame_env(
    flame_cluster: ClusterThread | RemoteCluster, monkeypatch: pytest.MonkeyPatch
) -> ClusterThread | RemoteCluster:
    wanted = flame_cluster.client_env({})
    for key in PASSED_ON:  # access settings meant for another cluster are dropped
        if key not in wanted:
            monkeypatch.delenv(key, raising=False)
    for key, value in wanted.items():
        monkeypatch.setenv(key, value)
    return flame_cluster


@pytest.fixture(scope="session")
def flame_connection(flame_cluster: ClusterThread | RemoteCluster) -> Iterator[object]:
    from flamepy import Connection

    with pytest.MonkeyPatch.context() as mp:  # the token goes to configured endpoints only
        for key, value in flame_cluster.client_env({}).items():
            mp.setenv(key, value)
        conn = Connection.connect(flame_cluster.endpoint)
    try:
        yield conn
    finally:
        conn.close()
