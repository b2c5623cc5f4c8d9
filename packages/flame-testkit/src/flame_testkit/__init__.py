"""flame-testkit: a local Flame for development and tests.

A session manager (Frontend), an executor manager that launches real instance
processes under the Host-shim contract, a pytest plugin and the ``flame-local``
command.  ``tests/test_public_api.py`` pins ``__all__``.
"""

from flame_testkit._cluster import (
    FLMRUN_APP,
    TEST_APP,
    ClusterThread,
    LocalCluster,
    LocalClusterConfig,
)
from flame_testkit._embedded import embedded_cluster
from flame_testkit._errors import ClusterConfigError, LocalClusterError

__version__ = "0.1.0"

__all__ = [
    "FLMRUN_APP",
    "TEST_APP",
    "ClusterConfigError",
    "ClusterThread",
    "LocalCluster",
    "LocalClusterConfig",
    "LocalClusterError",
    "__version__",
    "embedded_cluster",
]
