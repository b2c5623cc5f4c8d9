"""Cancelled tasks, the async API, fail-fast configuration and connection errors."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

import flamepy
from flamepy import (
    AsyncConnection,
    ConfigError,
    Connection,
    ConnectionFailedError,
    NotFoundError,
    SessionAttributes,
    TaskCancelledError,
    TaskFailedError,
    TaskState,
)

TEST_APP = "flmtest"
WAIT = 60.0


def _slow_start_app(conn: Connection, python: str = sys.executable) -> str:
    """An application whose instances never create their socket: tasks stay Pending."""
    name = f"slow-{uuid.uuid4().hex[:8]}"
    conn.register_application(
        name, {"command": python, "arguments": ["-c", "import time; time.sleep(120)"]}
    )
    return name


def test_close_session_cancels_pending_tasks_and_client_sees_it(
    flame_connection: Connection,
) -> None:
    app = _slow_start_app(flame_connection)
    try:
        ssn = flame_connection.create_session(SessionAttributes(application=app))
        tasks = [ssn.create_task(f"t{i}".encode()) for i in range(3)]
        future = ssn.run(b"also-pending")  # created in the background
        deadline = time.monotonic() + WAIT
        while flame_connection.get_session(ssn.id).pending < 4:
            assert time.monotonic() < deadline, "the fourth task never came"
            time.sleep(0.05)
        closed = flame_connection.close_session(ssn.id)
        assert closed.cancelled == 4 and closed.pending == 0
        for task in tasks:
            final = ssn.wait_task(task.id, timeout=WAIT)
            assert final.state == TaskState.CANCELLED
            assert final.completion_time is not None
        with pytest.raises(TaskCancelledError, match="cancelled"):
            future.result(timeout=WAIT)
    finally:
        flame_connection.unregister_application(app)


def test_async_api_end_to_end(flame_endpoint: str) -> None:
    async def main() -> list[bytes | None]:
        async with await AsyncConnection.connect(flame_endpoint) as conn:
            ssn = await conn.create_session(SessionAttributes(application=TEST_APP))
            async with ssn:
                outputs = await asyncio.gather(
                    *(ssn.invoke(f"{i}".encode(), WAIT) for i in range(50))
                )
                with pytest.raises(TaskFailedError, match="nope"):
                    await ssn.invoke(b"fail:nope", WAIT)
                task = await ssn.create_task(b"w")
                states = [t.state async for t in ssn.watch_task(task.id)]
                assert states[-1] == TaskState.SUCCEED
                listed = [t.id async for t in ssn.list_tasks()]
                assert len(listed) == 52
            assert ssn.state == flamepy.SessionState.CLOSED
            return outputs

    outputs = asyncio.run(main())
    assert outputs == [f"echo:{i}".encode() for i in range(50)]


def test_sync_task_future_is_awaitable(flame_connection: Connection) -> None:
    ssn = flame_connection.create_session(SessionAttributes(application=TEST_APP))
    try:

        async def main() -> bytes | None:
            return await ssn.run(b"awaited")  # type: ignore[no-any-return]

        assert asyncio.run(main()) == b"echo:awaited"
    finally:
        flame_connection.close_session(ssn.id)


def test_refused_endpoint_fails_fast_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(ConnectionFailedError) as info:
        Connection.connect(endpoint)
    assert time.monotonic() - start < 5
    assert endpoint in str(info.value)


def test_unanswered_endpoint_times_out_naming_it() -> None:
    with socket.socket() as silent:  # accepts TCP but never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ConnectionFailedError, match=r"within 0\.5s") as info:
            Connection.connect(endpoint, timeout=0.5)
    assert endpoint in str(info.value)


def test_malformed_flame_yaml_fails_fast_naming_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "flame.yaml"
    conf.write_text(
        "current-context: c\ncontexts:\n  - name: c\n    cluster:\n      endpoint: 42\n"
    )
    monkeypatch.setenv("FLAME_CONFIG", str(conf))
    monkeypatch.delenv("FLAME_ENDPOINT", raising=False)
    flamepy._client.reset_default_connection()
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        flamepy.list_applications()
    assert time.monotonic() - start < 2
    assert str(conf) in str(info.value)
    assert "contexts[0].cluster.endpoint" in str(info.value)


def test_module_level_api_uses_the_configured_endpoint(
    flame_env: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLAME_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FLAME_CONFIG")
    flamepy._client.reset_default_connection()
    try:
        ssn = flamepy.create_session(TEST_APP, common_data=b"cd")
        assert ssn.invoke(b"common", timeout=WAIT) == b"cd"
        assert flamepy.get_session(ssn.id).id == ssn.id
        assert flamepy.close_session(ssn.id).state == flamepy.SessionState.CLOSED
        assert flamepy.get_application(TEST_APP) is not None
        assert len(flamepy.list_nodes()) == 1
    finally:
        flamepy._client.reset_default_connection()


def test_follow_task_reports_states_and_returns_the_terminal_task(flame_endpoint: str) -> None:
    async def main() -> None:
        async with await AsyncConnection.connect(flame_endpoint) as conn:
            ssn = await conn.create_session(SessionAttributes(application=TEST_APP))
            async with ssn:
                seen: list[TaskState] = []
                task_id = await conn.create_task_id(ssn.id, b"sleep:0.2")
                final = await conn.follow_task(ssn.id, task_id, seen.append)
                assert final.state == TaskState.SUCCEED and final.output == b"slept"
                assert TaskState.RUNNING in seen and not any(s.is_terminal for s in seen)
                failed_id = await conn.create_task_id(ssn.id, b"fail:followed")
                failed = await conn.follow_task(ssn.id, failed_id, seen.append)
                assert failed.state == TaskState.FAILED
                assert "followed" in (failed.failure_message() or "")
                with pytest.raises(NotFoundError):
                    await conn.follow_task(ssn.id, "999999", seen.append)

    asyncio.run(main())
