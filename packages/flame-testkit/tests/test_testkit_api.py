"""Pin flame-testkit's public API and its pytest plugin registration."""

from __future__ import annotations

from importlib.metadata import entry_points

import flame_testkit


def test_all_is_pinned() -> None:
    assert set(flame_testkit.__all__) == {
        "FLMRUN_APP", "TEST_APP", "ClusterThread", "LocalCluster", "LocalClusterConfig",
        "__version__", "embedded_cluster",
    }  # fmt: skip


def test_plugin_is_registered_through_pytest11() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("flame_testkit") == "flame_testkit._plugin"


def test_plugin_module_holds_fixtures_only() -> None:
    from flame_testkit import _plugin

    public = [n for n in vars(_plugin) if n.startswith("flame_")]
    assert set(public) == {
        "flame_cluster", "flame_cluster_config", "flame_endpoint", "flame_env", "flame_connection",
    }  # fmt: skip
