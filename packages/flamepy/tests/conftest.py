"""Our own tests also use ``flmtest``, the test application no real cluster has:
they ask for it explicitly (``test_app=True``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flame_testkit import LocalClusterConfig
from flame_testkit._plugin import testing_cluster_config


@pytest.fixture(scope="session")
def flame_cluster_config() -> LocalClusterConfig:
    return testing_cluster_config(test_app=True)


@pytest.fixture(scope="session", autouse=True)
def _package_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The Runner's package index (``$XDG_CACHE_HOME/flame/packages``) in a temporary
    directory, for this process and the programs the tests start."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield
