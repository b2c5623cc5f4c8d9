"""Our own tests also use ``flmtest``, the test application no real cluster has:
they ask for it explicitly (``test_app=True``)."""

from __future__ import annotations

import pytest

from flame_testkit import LocalClusterConfig
from flame_testkit._plugin import testing_cluster_config


@pytest.fixture(scope="session")
def flame_cluster_config() -> LocalClusterConfig:
    return testing_cluster_config(test_app=True)
