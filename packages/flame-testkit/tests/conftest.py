"""Our own tests also use ``flmtest``, the test application no real cluster has:
they ask for it explicitly (``test_app=True``)."""

from __future__ import annotations

import pytest

from flame_testkit import LocalClusterConfig
from flame_testkit._executor import DEFAULT_CAPACITY
from flame_testkit._plugin import TEST_DELAY_RELEASE


@pytest.fixture(scope="session")
def flame_cluster_config() -> LocalClusterConfig:
    return LocalClusterConfig(
        delay_release=TEST_DELAY_RELEASE,
        kill_grace=2.0,
        capacity=max(2, DEFAULT_CAPACITY),
        cache_local_transfer=True,
        test_app=True,
    )
