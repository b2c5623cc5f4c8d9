"""Pin flame-testkit's public API and its pytest plugin registration."""

from __future__ import annotations

import shutil
from importlib.metadata import entry_points
from pathlib import Path

import flame_testkit


def test_all_is_pinned() -> None:
    assert set(flame_testkit.__all__) == {
        "FLMRUN_APP", "TEST_APP", "ClusterThread", "LocalCluster", "LocalClusterConfig",
        "__version__", "embedded_cluster", "ClusterConfigError", "LocalClusterError",
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


def test_a_cluster_can_run_on_a_loop_it_does_not_own() -> None:
    import asyncio
    import threading

    import pytest

    from flame_testkit import ClusterThread, LocalClusterConfig
    from flamepy import AsyncConnection

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        cluster = ClusterThread(LocalClusterConfig(cache=False, in_process=True), loop=loop)
        cluster.start()

        async def on_the_loop() -> list[str]:
            conn = await AsyncConnection.connect(cluster.endpoint)
            try:
                assert conn.in_process  # same loop: the servicer is awaited directly
                with pytest.raises(RuntimeError, match="its own event loop"):
                    cluster.call(asyncio.sleep(0))  # would deadlock: refused
                return [app.name for app in await conn.list_applications()]
            finally:
                await conn.close()

        names = asyncio.run_coroutine_threadsafe(on_the_loop(), loop).result(60)
        assert "flmrun" in names
        cluster.stop()
        cluster.stop()  # twice is fine
        assert loop.is_running()  # the loop is not the cluster's to stop
        assert cluster.leftover_processes() == []
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_new_cluster_sweeps_what_dead_clusters_left(tmp_path: Path) -> None:
    """Issue 20, case 8: the work and socket directories of a cluster whose process
    is gone (killed with SIGKILL) are removed by the next cluster; live ones stay."""
    import os
    import subprocess
    import tempfile

    from flame_testkit._auth import OWNER_FILE

    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: its pid belongs to no process now
    dead_pid = proc.pid
    made = []
    for prefix, parent in (("flame-local-", tempfile.gettempdir()), ("flms-", "/tmp")):
        for owner in (dead_pid, os.getpid()):
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            (path / OWNER_FILE).write_text(str(owner))
            made.append((path, owner))
    try:
        with flame_testkit.ClusterThread(flame_testkit.LocalClusterConfig(cache=False)):
            pass
        for path, owner in made:
            assert path.exists() == (owner == os.getpid()), path
    finally:
        for path, _ in made:
            shutil.rmtree(path, ignore_errors=True)
