"""The synchronous client against a real local cluster (real sockets, real instances)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import flamepy
from flamepy import (
    AlreadyExistsError,
    ApplicationAttributes,
    Connection,
    InvalidArgumentError,
    NotFoundError,
    SessionAttributes,
    SessionState,
    TaskFailedError,
    TaskState,
)

TEST_APP = "flmtest"
WAIT = 60.0


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def session(flame_connection: Connection) -> Iterator[flamepy.Session]:
    ssn = flame_connection.create_session(SessionAttributes(application=TEST_APP))
    yield ssn
    flame_connection.close_session(ssn.id)


# -- applications ----------------------------------------------------------------------


def test_register_get_update_list_unregister(flame_connection: Connection) -> None:
    name = _name("app")
    flame_connection.register_application(
        name,
        {
            "command": "/bin/true",
            "arguments": ["a", "b"],
            "environments": {"K": "V"},
            "description": "first",
            "max_instances": 3,
            "schema": {"input": '{"type": "string"}'},
        },
    )
    app = flame_connection.get_application(name)
    assert app is not None
    assert (app.name, app.command, app.arguments, app.environments) == (
        name,
        "/bin/true",
        ["a", "b"],
        {"K": "V"},
    )
    assert app.max_instances == 3
    assert app.delay_release == 60  # the server default is always reported
    assert app.schema is not None and app.schema.input == '{"type": "string"}'
    assert name in {a.name for a in flame_connection.list_applications()}

    flame_connection.update_application(
        name, ApplicationAttributes(command="/bin/false", description="second")
    )
    updated = flame_connection.get_application(name)
    assert updated is not None and updated.description == "second"

    flame_connection.unregister_application(name)
    assert flame_connection.get_application(name) is None


def test_duplicate_application_is_already_exists(flame_connection: Connection) -> None:
    name = _name("dup")
    flame_connection.register_application(name, {"command": "/bin/true"})
    try:
        with pytest.raises(AlreadyExistsError, match="already exists"):
            flame_connection.register_application(name, {"command": "/bin/true"})
    finally:
        flame_connection.unregister_application(name)


def test_invalid_application_name_is_rejected_with_the_server_message(
    flame_connection: Connection,
) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid application name"):
        flame_connection.register_application("-bad", {"command": "/bin/true"})


def test_unknown_application_attribute_names_the_valid_ones(flame_connection: Connection) -> None:
    with pytest.raises(InvalidArgumentError, match="commandd"):
        flame_connection.register_application(_name("x"), {"commandd": "/bin/true"})


def test_relative_working_directory_maps_to_invalid_argument(flame_connection: Connection) -> None:
    with pytest.raises(InvalidArgumentError, match="absolute"):
        flame_connection.register_application(_name("x"), {"working_directory": "rel/dir"})


# -- sessions --------------------------------------------------------------------------


def test_session_lifecycle(flame_connection: Connection) -> None:
    ssn = flame_connection.create_session(
        SessionAttributes(application=TEST_APP, common_data=b"ctx", max_instances=1)
    )
    assert ssn.id.startswith(f"{TEST_APP}-") and len(ssn.id) == len(TEST_APP) + 7
    assert ssn.state == SessionState.OPEN
    assert ssn.common_data() == b"ctx"
    fetched = flame_connection.get_session(ssn.id)
    assert (fetched.application, fetched.max_instances) == (TEST_APP, 1)
    assert ssn.id in {s.id for s in flame_connection.list_sessions()}
    closed = flame_connection.close_session(ssn.id)
    assert closed.state == SessionState.CLOSED
    assert closed.completion_time is not None


def test_open_session_gets_or_creates(flame_connection: Connection) -> None:
    sid = _name("open")
    spec = SessionAttributes(application=TEST_APP, min_instances=0, max_instances=2)
    created = flame_connection.open_session(sid, spec)
    again = flame_connection.open_session(sid, spec)
    plain = flame_connection.open_session(sid)
    assert created.id == again.id == plain.id == sid
    flame_connection.close_session(sid)


def test_open_session_spec_mismatch_raises_with_server_message(
    flame_connection: Connection,
) -> None:
    sid = _name("mismatch")
    flame_connection.open_session(sid, SessionAttributes(application=TEST_APP, max_instances=2))
    try:
        with pytest.raises(InvalidArgumentError, match="spec mismatch") as info:
            flame_connection.open_session(
                sid, SessionAttributes(application=TEST_APP, max_instances=3)
            )
        assert "max_instances" in info.value.message
        assert info.value.code == flamepy.FlameErrorCode.INVALID_ARGUMENT
    finally:
        flame_connection.close_session(sid)


def test_open_absent_session_without_spec_is_not_found(flame_connection: Connection) -> None:
    with pytest.raises(NotFoundError):
        flame_connection.open_session(_name("absent"))


def test_get_unknown_session_is_not_found(flame_connection: Connection) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        flame_connection.get_session("no-such-session")


def test_session_context_manager_closes(flame_connection: Connection) -> None:
    with flame_connection.create_session(SessionAttributes(application=TEST_APP)) as ssn:
        assert ssn.invoke(b"x", timeout=WAIT) == b"echo:x"
    assert flame_connection.get_session(ssn.id).state == SessionState.CLOSED


# -- tasks -----------------------------------------------------------------------------


def test_invoke_returns_output(session: flamepy.Session) -> None:
    assert session.invoke(b"hello", timeout=WAIT) == b"echo:hello"


def test_task_snapshot_methods(session: flamepy.Session) -> None:
    task = session.create_task(b"abc")
    assert task.state == TaskState.PENDING and task.id == "1"
    final = session.wait_task(task.id, timeout=WAIT)
    assert final.state == TaskState.SUCCEED and final.output == b"echo:abc"
    fetched = session.get_task(task.id)
    assert [e.code for e in fetched.events or []] == [0, 1, 2]
    assert fetched.is_completed() and not fetched.is_failed()
    listed = list(session.list_tasks())
    assert [t.id for t in listed] == ["1"]


def test_watch_task_ends_with_terminal_state(session: flamepy.Session) -> None:
    task = session.create_task(b"sleep:0.2")
    states = [t.state for t in session.watch_task(task.id, timeout=WAIT)]
    assert states[-1] == TaskState.SUCCEED
    assert all(s in (TaskState.PENDING, TaskState.RUNNING) for s in states[:-1])


def test_failed_task_carries_the_instance_error(session: flamepy.Session) -> None:
    with pytest.raises(TaskFailedError) as info:
        session.invoke(b"fail:kaboom", timeout=WAIT)
    assert "RuntimeError: kaboom" in info.value.message
    assert "Traceback" in info.value.message
    assert info.value.session_id == session.id


def test_wait_timeout_raises_flame_timeout(session: flamepy.Session) -> None:
    task = session.create_task(b"sleep:2")
    with pytest.raises(flamepy.FlameTimeoutError, match=r"did not finish within 0\.2s"):
        session.wait_task(task.id, timeout=0.2)
    future = session.run(b"sleep:1")
    with pytest.raises(TimeoutError):  # a concurrent.futures timeout on the future
        future.result(timeout=0.1)
    assert session.wait_task(task.id, timeout=WAIT).state == TaskState.SUCCEED
    assert future.result(timeout=WAIT) == b"slept"


def test_non_bytes_input_is_a_usage_error(session: flamepy.Session) -> None:
    with pytest.raises(InvalidArgumentError, match="bytes"):
        session.create_task("text")  # type: ignore[arg-type]


def test_thousand_tasks_across_two_instances(flame_connection: Connection) -> None:
    ssn = flame_connection.create_session(
        SessionAttributes(application=TEST_APP, min_instances=2, max_instances=2)
    )
    try:
        deadline = time.monotonic() + WAIT  # both instances up before the burst
        while (
            len(
                [
                    e
                    for e in flame_connection.list_executors()
                    if e.session_id == ssn.id and e.state.name == "BOUND"
                ]
            )
            < 2
        ):
            assert time.monotonic() < deadline, "two instances did not start"
            time.sleep(0.05)
        threads_before = threading.active_count()
        futures = [ssn.run(f"who:{i}".encode()) for i in range(1000)]
        threads_during = threading.active_count()
        outputs = [f.result(timeout=WAIT) for f in futures]
    finally:
        flame_connection.close_session(ssn.id)
    pids = set()
    for i, out in enumerate(outputs):
        pid, _, payload = out.partition(b":")
        assert payload == str(i).encode()
        pids.add(pid)
    assert len(pids) == 2, f"expected 2 instances, saw {len(pids)}"
    assert threads_during - threads_before <= 2, "in-flight tasks must not need threads"
    status = flame_connection.get_session(ssn.id)
    assert (status.succeed, status.failed, status.pending) == (1000, 0, 0)


def test_crashed_instance_fails_its_task_and_is_replaced(flame_connection: Connection) -> None:
    ssn = flame_connection.create_session(SessionAttributes(application=TEST_APP, max_instances=1))
    try:
        first_pid = ssn.invoke(b"pid", timeout=WAIT)
        with pytest.raises(TaskFailedError, match="exited with code 7"):
            ssn.invoke(b"exit:7", timeout=WAIT)
        outputs = [ssn.invoke(f"n{i}".encode(), timeout=WAIT) for i in range(3)]
        assert outputs == [b"echo:n0", b"echo:n1", b"echo:n2"]
        assert ssn.invoke(b"pid", timeout=WAIT) != first_pid
    finally:
        flame_connection.close_session(ssn.id)
