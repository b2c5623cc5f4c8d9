"""The in-process transport: a Frontend served by this process, called directly.

The embedded default registers its servicer; these tests do the same with a real
local cluster, and check that the direct path behaves as the gRPC one does
(replies, streams, errors, deadlines), that other clients still use gRPC, and
that nothing is left registered after the cluster stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy import (
    FlameTimeoutError,
    InternalError,
    NotFoundError,
    SessionAttributes,
    TaskState,
    connect,
)
from flamepy._async_client import AsyncConnection
from flamepy._inproc import lookup
from flamepy.proto import frontend_pb2 as fe
from flamepy.proto import frontend_pb2_grpc

WAIT = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterThread]:
    with ClusterThread(LocalClusterConfig(in_process=True, delay_release=2, test_app=True)) as c:
        yield c
    assert lookup(c.endpoint) is None  # unregistered when it stopped
    assert c.leftover_processes() == []


def test_a_connection_in_this_process_skips_grpc(cluster: ClusterThread) -> None:
    with connect(cluster.endpoint) as conn:
        assert conn._inner.in_process
        assert conn.get_application("flmrun") is not None
        assert conn.get_application("no-such-app") is None
        with pytest.raises(NotFoundError, match="no-such-session"):
            conn.get_session("no-such-session")
        ssn = conn.create_session(SessionAttributes(application="flmtest"))
        try:
            assert ssn.invoke(b"direct", timeout=WAIT) == b"echo:direct"
            task = ssn.create_task(b"sleep:3")  # long enough to be watched while running
            states = [t.state for t in ssn.watch_task(task.id, timeout=WAIT)]
            assert states[-1] == TaskState.SUCCEED  # no current state first (T1)
            assert [t.id for t in ssn.list_tasks()] == ["1", "2"]
        finally:
            ssn.close()


def test_other_clients_still_reach_it_over_grpc(cluster: ClusterThread) -> None:
    target = cluster.endpoint.removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        stub = frontend_pb2_grpc.FrontendStub(channel)  # type: ignore[no-untyped-call]
        names = {
            a.metadata.name for a in stub.ListApplication(fe.ListApplicationRequest()).applications
        }
        assert {"flmrun", "flmtest"} <= names


def test_deadlines_cancellation_and_close(cluster: ClusterThread) -> None:
    async def scenario() -> None:
        conn = await AsyncConnection.connect(cluster.endpoint)
        assert conn.in_process
        session = await conn.create_session(SessionAttributes(application="flmtest"))
        task = await session.create_task(b"sleep:5")
        watcher = asyncio.ensure_future(session.wait_task(task.id))
        await asyncio.sleep(0.3)
        watcher.cancel()  # the stream's pump on the cluster loop stops too
        with pytest.raises(asyncio.CancelledError):
            await watcher
        conn.rpc_timeout = 0.000_001
        with pytest.raises(FlameTimeoutError):
            await conn.list_applications()
        conn.rpc_timeout = WAIT
        pending = await session.create_task(b"sleep:5")
        await session.close()
        final = await session.wait_task(pending.id, timeout=WAIT)
        assert final.state in (TaskState.CANCELLED, TaskState.FAILED, TaskState.SUCCEED)
        with pytest.raises(InternalError, match="is closed"):  # an abort, mapped
            await conn.run_task(session.id, b"late", timeout=WAIT)
        await conn.close()

    asyncio.run(scenario())
