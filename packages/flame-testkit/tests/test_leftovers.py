"""What a long-running local cluster keeps is bounded (issue 20, case 8): instance
logs, two files per launch, are pruned to the newest ``LOGS_KEPT``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flame_testkit import ClusterThread, LocalClusterConfig, _executor
from flame_testkit._launch import prune_logs
from flamepy import Connection, SessionAttributes

WAIT = 60.0


def test_prune_logs_keeps_the_newest(tmp_path: Path) -> None:
    for i in range(10):
        path = tmp_path / f"{i}.out"
        path.write_text(str(i))
        os.utime(path, ns=(i * 10**9, i * 10**9))
    assert prune_logs(tmp_path, 4) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["6.out", "7.out", "8.out", "9.out"]
    assert prune_logs(tmp_path, 4) == 0
    assert prune_logs(tmp_path / "missing", 4) == 0


@pytest.fixture
def small_logs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ClusterThread]:
    monkeypatch.setattr(_executor, "LOGS_KEPT", 4)
    config = LocalClusterConfig(
        capacity=1, delay_release=0, work_dir=tmp_path / "work", test_app=True
    )
    with ClusterThread(config) as cluster:
        yield cluster
    assert cluster.leftover_processes() == []


def test_instance_logs_stay_bounded(small_logs: ClusterThread) -> None:
    logs = small_logs.cluster.work_dir / "logs"
    with Connection.connect(small_logs.endpoint) as conn:
        for _ in range(6):  # six launches: twelve log files without pruning
            session = conn.create_session(SessionAttributes(application="flmtest"))
            assert session.invoke(b"pid", timeout=WAIT)
            conn.close_session(session.id)
    # Each launch prunes first, then adds its two: at most the kept ones plus two.
    assert len(list(logs.iterdir())) <= 4 + 2


def test_a_killed_writes_temporary_file_is_removed_at_start(tmp_path: Path) -> None:
    """A kill -9 during a disk write left a 455 MB ``.tmp`` file that every start
    mentioned and none deleted."""
    from flame_testkit._cache_server import CacheServer

    session = tmp_path / "store" / "app" / "ssn"
    session.mkdir(parents=True)
    leftover = session / ".obj.arrow.0123456789abcdef.tmp"
    leftover.write_bytes(b"x" * 4096)
    deltas = session / "other.deltas"
    deltas.mkdir()
    (deltas / ".0.arrow.feed.tmp").write_bytes(b"y")
    server = CacheServer(host="127.0.0.1", port=0, storage=str(tmp_path / "store"))
    server.start()
    try:
        assert not leftover.exists()
    finally:
        server.stop()
