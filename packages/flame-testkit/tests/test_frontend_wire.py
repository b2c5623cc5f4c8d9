"""Wire-level tests of the local Frontend (flame-wire.md §0, §1, §3, §5.4).

A real :class:`flame_testkit.ClusterThread` serves ``flame.v1.Frontend`` on a real TCP
socket, and the tests speak to it with the raw generated gRPC stubs (not the flamepy
client), checking status codes, ``Result`` conventions and message contents exactly as a
client of the real session manager would see them.

Tasks that must stay Pending run in sessions with ``max_instances=0`` (of the
``never-runs`` application): as on a real cluster (S3), such a session never gets an
instance, so nothing can pick the tasks up.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

import flame_testkit
from flamepy.proto import frontend_pb2, frontend_pb2_grpc, types_pb2

RPC_TIMEOUT = 10.0
"""Deadline of every unary call and of streams that should end at once."""
TASK_TIMEOUT = 90.0
"""Deadline of streams that wait for a real instance process to run a task."""
MINUTE_MS = 60_000
GIB = 1024**3

PENDING_APP = "never-runs"
"""An application whose sessions get ``max_instances=0`` unless a test says otherwise."""

TaskState = types_pb2.TaskState


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[flame_testkit.ClusterThread]:
    thread = flame_testkit.ClusterThread(
        flame_testkit.LocalClusterConfig(delay_release=1, kill_grace=2.0, test_app=True)
    )
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()
    assert thread.leftover_processes() == [], "instance processes outlived the cluster"


@pytest.fixture(scope="module")
def stub(cluster: flame_testkit.ClusterThread) -> Iterator[frontend_pb2_grpc.FrontendStub]:
    target = cluster.endpoint.removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        yield frontend_pb2_grpc.FrontendStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def pending_app(stub: frontend_pb2_grpc.FrontendStub) -> str:
    spec = types_pb2.ApplicationSpec(command="/bin/false", max_instances=0)
    result = stub.RegisterApplication(
        frontend_pb2.RegisterApplicationRequest(name=PENDING_APP, application=spec),
        timeout=RPC_TIMEOUT,
    )
    assert result.return_code == 0, result.message
    return PENDING_APP


# --------------------------------------------------------------------------- helpers


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _assert_recent_ms(value: int) -> None:
    """``value`` is epoch milliseconds, taken within the last minute."""
    assert abs(value - _now_ms()) < MINUTE_MS, value


def _status(call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, str]:
    """Make a unary call that must fail; return its status code and details."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=RPC_TIMEOUT)
    err: Any = info.value
    return err.code(), err.details()


def _register(
    stub: frontend_pb2_grpc.FrontendStub, name: str, spec: types_pb2.ApplicationSpec | None
) -> types_pb2.Result:
    request = frontend_pb2.RegisterApplicationRequest(name=name)
    if spec is not None:
        request.application.CopyFrom(spec)
    result: types_pb2.Result = stub.RegisterApplication(request, timeout=RPC_TIMEOUT)
    return result


def _create_session(
    stub: frontend_pb2_grpc.FrontendStub, app: str, **spec: Any
) -> types_pb2.Session:
    if app == PENDING_APP:
        spec.setdefault("max_instances", 0)  # no instance, ever (S3)
    spec = {k: v for k, v in spec.items() if v is not None}
    request = frontend_pb2.CreateSessionRequest(
        session_id=_uid(app), session=types_pb2.SessionSpec(application=app, **spec)
    )
    session: types_pb2.Session = stub.CreateSession(request, timeout=RPC_TIMEOUT)
    return session


def _create_task(
    stub: frontend_pb2_grpc.FrontendStub, session_id: str, data: bytes | None
) -> types_pb2.Task:
    request = frontend_pb2.CreateTaskRequest(task=types_pb2.TaskSpec(session_id=session_id))
    if data is not None:
        request.task.input = data
    task: types_pb2.Task = stub.CreateTask(request, timeout=RPC_TIMEOUT)
    return task


def _get_task(
    stub: frontend_pb2_grpc.FrontendStub, session_id: str, task_id: str
) -> types_pb2.Task:
    task: types_pb2.Task = stub.GetTask(
        frontend_pb2.GetTaskRequest(session_id=session_id, task_id=task_id),
        timeout=RPC_TIMEOUT,
    )
    return task


def _get_session(stub: frontend_pb2_grpc.FrontendStub, session_id: str) -> types_pb2.Session:
    session: types_pb2.Session = stub.GetSession(
        frontend_pb2.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT
    )
    return session


def _close(stub: frontend_pb2_grpc.FrontendStub, session_id: str) -> types_pb2.Session:
    session: types_pb2.Session = stub.CloseSession(
        frontend_pb2.CloseSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT
    )
    return session


def _watch_all(
    stub: frontend_pb2_grpc.FrontendStub,
    session_id: str,
    task_id: str,
    timeout: float = TASK_TIMEOUT,
) -> tuple[list[types_pb2.Task], grpc.StatusCode]:
    """Read a WatchTask stream to its end; return the messages and the final status."""
    call: Any = stub.WatchTask(
        frontend_pb2.WatchTaskRequest(session_id=session_id, task_id=task_id), timeout=timeout
    )
    messages = list(call)
    return messages, call.code()


# --------------------------------------------------------------------------- applications


@pytest.mark.parametrize(
    "name",
    ["", "-dash", ".dot", "a..b", "has space", "x" * 254, "newline\n"],
    ids=["empty", "dash", "dot", "dotdot", "space", "too-long", "trailing-newline"],
)
def test_register_bad_name_is_result_minus_one(
    stub: frontend_pb2_grpc.FrontendStub, name: str
) -> None:
    result = _register(stub, name, types_pb2.ApplicationSpec(command="/bin/true"))
    assert result.return_code == -1
    assert result.HasField("message")
    assert result.message


def test_register_duplicate_is_result_minus_one(stub: frontend_pb2_grpc.FrontendStub) -> None:
    name = _uid("dup")
    first = _register(stub, name, types_pb2.ApplicationSpec(command="/bin/true"))
    assert first.return_code == 0
    second = _register(stub, name, types_pb2.ApplicationSpec(command="/bin/false"))
    assert second.return_code == -1
    assert name in second.message
    app = stub.GetApplication(frontend_pb2.GetApplicationRequest(name=name), timeout=RPC_TIMEOUT)
    assert app.spec.command == "/bin/true"


def _schema_spec(text: str) -> types_pb2.ApplicationSpec:
    spec = types_pb2.ApplicationSpec(command="/bin/true")
    spec.schema.input = text
    return spec


@pytest.mark.parametrize(
    "spec",
    [
        None,
        _schema_spec("{not json"),
        _schema_spec("17"),
        types_pb2.ApplicationSpec(command="/bin/true", working_directory="relative/dir"),
    ],
    ids=["missing-spec", "schema-not-json", "schema-not-object", "relative-workdir"],
)
def test_register_invalid_spec_is_invalid_argument(
    stub: frontend_pb2_grpc.FrontendStub, spec: types_pb2.ApplicationSpec | None
) -> None:
    name = _uid("badspec")
    request = frontend_pb2.RegisterApplicationRequest(name=name)
    if spec is not None:
        request.application.CopyFrom(spec)
    code, details = _status(stub.RegisterApplication, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details
    code, _ = _status(stub.GetApplication, frontend_pb2.GetApplicationRequest(name=name))
    assert code == grpc.StatusCode.NOT_FOUND


def test_register_empty_working_directory_is_unset(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    name = _uid("emptywd")
    result = _register(
        stub, name, types_pb2.ApplicationSpec(command="/bin/true", working_directory="")
    )
    assert result.return_code == 0, result.message
    app = stub.GetApplication(frontend_pb2.GetApplicationRequest(name=name), timeout=RPC_TIMEOUT)
    assert not app.spec.HasField("working_directory")


def test_get_application_unknown_is_not_found(stub: frontend_pb2_grpc.FrontendStub) -> None:
    code, details = _status(
        stub.GetApplication, frontend_pb2.GetApplicationRequest(name=_uid("nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details


def test_get_application_fills_defaults(stub: frontend_pb2_grpc.FrontendStub) -> None:
    name = _uid("defaults")
    assert _register(stub, name, types_pb2.ApplicationSpec(command="/bin/true")).return_code == 0
    app = stub.GetApplication(frontend_pb2.GetApplicationRequest(name=name), timeout=RPC_TIMEOUT)
    assert app.metadata.id == app.metadata.name == name
    assert app.spec.HasField("max_instances")
    assert app.spec.max_instances == 1_000_000
    assert app.spec.HasField("delay_release")
    assert app.spec.delay_release == 60
    assert app.status.state == types_pb2.Enabled
    _assert_recent_ms(app.status.creation_time)


def test_get_application_keeps_explicit_values(stub: frontend_pb2_grpc.FrontendStub) -> None:
    name = _uid("explicit")
    spec = types_pb2.ApplicationSpec(command="/bin/true", max_instances=0, delay_release=0)
    assert _register(stub, name, spec).return_code == 0
    app = stub.GetApplication(frontend_pb2.GetApplicationRequest(name=name), timeout=RPC_TIMEOUT)
    assert app.spec.HasField("max_instances")
    assert app.spec.max_instances == 0
    assert app.spec.delay_release == 0


def test_default_applications_are_listed(stub: frontend_pb2_grpc.FrontendStub) -> None:
    apps = stub.ListApplication(frontend_pb2.ListApplicationRequest(), timeout=RPC_TIMEOUT)
    by_name = {a.metadata.name: a for a in apps.applications}
    assert {flame_testkit.FLMRUN_APP, flame_testkit.TEST_APP} <= set(by_name)
    assert by_name[flame_testkit.TEST_APP].spec.delay_release == 1  # from LocalClusterConfig


def test_update_application_conventions(stub: frontend_pb2_grpc.FrontendStub) -> None:
    name = _uid("upd")
    assert _register(stub, name, types_pb2.ApplicationSpec(command="/bin/true")).return_code == 0
    ok = stub.UpdateApplication(
        frontend_pb2.UpdateApplicationRequest(
            name=name, application=types_pb2.ApplicationSpec(command="/bin/false")
        ),
        timeout=RPC_TIMEOUT,
    )
    assert ok.return_code == 0
    unknown = stub.UpdateApplication(
        frontend_pb2.UpdateApplicationRequest(
            name=_uid("missing"), application=types_pb2.ApplicationSpec(command="/bin/true")
        ),
        timeout=RPC_TIMEOUT,
    )
    assert unknown.return_code == -1
    code, _ = _status(
        stub.UpdateApplication,
        frontend_pb2.UpdateApplicationRequest(
            name=name, application=types_pb2.ApplicationSpec(working_directory="rel")
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    app = stub.GetApplication(frontend_pb2.GetApplicationRequest(name=name), timeout=RPC_TIMEOUT)
    assert app.spec.command == "/bin/false"


def test_unregister_application_with_a_closed_session_drops_it(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    """Open sessions block it (A1, ``test_semantics.py``); closed ones go with it."""
    name = _uid("unreg")
    spec = types_pb2.ApplicationSpec(command="/bin/true", max_instances=0)
    assert _register(stub, name, spec).return_code == 0
    session = _create_session(stub, name, max_instances=0)
    _close(stub, session.metadata.id)
    result = stub.UnregisterApplication(
        frontend_pb2.UnregisterApplicationRequest(name=name), timeout=RPC_TIMEOUT
    )
    assert result.return_code == 0
    code, _ = _status(
        stub.GetSession, frontend_pb2.GetSessionRequest(session_id=session.metadata.id)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    again = stub.UnregisterApplication(  # an unknown name succeeds (A2)
        frontend_pb2.UnregisterApplicationRequest(name=name), timeout=RPC_TIMEOUT
    )
    assert again.return_code == 0


# --------------------------------------------------------------------------- sessions


def test_create_session_without_spec_is_invalid_argument(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    sid = _uid("nospec")
    code, _ = _status(stub.CreateSession, frontend_pb2.CreateSessionRequest(session_id=sid))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_create_session_unknown_app_is_internal(stub: frontend_pb2_grpc.FrontendStub) -> None:
    sid = _uid("noapp")
    request = frontend_pb2.CreateSessionRequest(
        session_id=sid, session=types_pb2.SessionSpec(application=_uid("missing"))
    )
    code, details = _status(stub.CreateSession, request)
    assert code == grpc.StatusCode.INTERNAL
    assert details
    code, _ = _status(stub.GetSession, frontend_pb2.GetSessionRequest(session_id=sid))
    assert code == grpc.StatusCode.NOT_FOUND


def test_create_session_duplicate_is_internal(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    session = _create_session(stub, pending_app)
    request = frontend_pb2.CreateSessionRequest(
        session_id=session.metadata.id, session=types_pb2.SessionSpec(application=pending_app)
    )
    code, _ = _status(stub.CreateSession, request)
    assert code == grpc.StatusCode.INTERNAL


def test_create_session_response(stub: frontend_pb2_grpc.FrontendStub, pending_app: str) -> None:
    session = _create_session(
        stub, pending_app, batch_size=8, common_data=b"\x00cd", max_instances=None
    )
    assert session.metadata.id == session.metadata.name
    assert session.metadata.id.startswith(pending_app)
    assert session.spec.application == pending_app
    assert session.spec.batch_size == 1
    assert session.spec.HasField("resreq")
    resreq = session.spec.resreq
    assert (resreq.cpu, resreq.memory, resreq.gpu) == (1, GIB, 0)
    assert session.spec.common_data == b"\x00cd"
    assert not session.spec.HasField("max_instances")
    assert session.status.state == types_pb2.Open
    assert not session.status.HasField("completion_time")
    _assert_recent_ms(session.status.creation_time)
    counts = session.status
    assert (counts.pending, counts.running, counts.succeed, counts.failed, counts.cancelled) == (
        0,
        0,
        0,
        0,
        0,
    )


def test_open_session_absent_without_spec_is_not_found(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    sid = _uid("absent")
    code, _ = _status(stub.OpenSession, frontend_pb2.OpenSessionRequest(session_id=sid))
    assert code == grpc.StatusCode.NOT_FOUND


def test_open_session_get_or_create(stub: frontend_pb2_grpc.FrontendStub, pending_app: str) -> None:
    sid = _uid("open")
    spec = types_pb2.SessionSpec(application=pending_app, min_instances=0, common_data=b"a")
    created = stub.OpenSession(
        frontend_pb2.OpenSessionRequest(session_id=sid, session=spec), timeout=RPC_TIMEOUT
    )
    assert created.metadata.id == sid
    assert created.spec.batch_size == 1
    assert created.spec.resreq.memory == GIB
    # (a) existing + same spec (common_data differs: not compared) returns it
    spec.common_data = b"different"
    again = stub.OpenSession(
        frontend_pb2.OpenSessionRequest(session_id=sid, session=spec), timeout=RPC_TIMEOUT
    )
    assert again.metadata.id == sid
    assert again.spec.common_data == b"a"
    assert again.status.creation_time == created.status.creation_time
    # (a) without a spec
    plain = stub.OpenSession(frontend_pb2.OpenSessionRequest(session_id=sid), timeout=RPC_TIMEOUT)
    assert plain.metadata.id == sid


@pytest.mark.parametrize(
    "change",
    [
        {"min_instances": 2},
        {"max_instances": 3},
        {"priority": 1},
        {"resreq": types_pb2.ResourceRequirement(cpu=2, memory=GIB)},
    ],
    ids=["min_instances", "max_instances", "priority", "resreq"],
)
def test_open_session_spec_mismatch_is_invalid_argument(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str, change: dict[str, Any]
) -> None:
    session = _create_session(stub, pending_app)
    request = frontend_pb2.OpenSessionRequest(
        session_id=session.metadata.id,
        session=types_pb2.SessionSpec(application=pending_app, **change),
    )
    code, details = _status(stub.OpenSession, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec mismatch" in details


def test_open_session_application_mismatch(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    session = _create_session(stub, pending_app)
    request = frontend_pb2.OpenSessionRequest(
        session_id=session.metadata.id,
        session=types_pb2.SessionSpec(application=flame_testkit.TEST_APP),
    )
    code, details = _status(stub.OpenSession, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec mismatch" in details


def test_open_closed_session_is_invalid_argument(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    session = _create_session(stub, pending_app)
    _close(stub, session.metadata.id)
    code, details = _status(
        stub.OpenSession, frontend_pb2.OpenSessionRequest(session_id=session.metadata.id)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not open" in details


def test_get_session_unknown_is_not_found(stub: frontend_pb2_grpc.FrontendStub) -> None:
    code, _ = _status(stub.GetSession, frontend_pb2.GetSessionRequest(session_id=_uid("nope")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_list_session_includes_created(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    session = _create_session(stub, pending_app)
    listed = stub.ListSession(frontend_pb2.ListSessionRequest(), timeout=RPC_TIMEOUT)
    assert session.metadata.id in {s.metadata.id for s in listed.sessions}


def test_close_session_cancels_pending_task(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    session = _create_session(stub, pending_app)
    sid = session.metadata.id
    task = _create_task(stub, sid, b"never")
    call: Any = stub.WatchTask(
        frontend_pb2.WatchTaskRequest(session_id=sid, task_id=task.metadata.id),
        timeout=RPC_TIMEOUT,
    )
    # The current (Pending) state is not sent first (T1): the stream waits for a change.
    assert _get_session(stub, sid).status.pending == 1

    closed = _close(stub, sid)

    assert closed.status.state == types_pb2.Closed
    assert closed.status.HasField("completion_time")
    _assert_recent_ms(closed.status.completion_time)
    assert closed.status.cancelled == 1
    assert closed.status.pending == 0
    rest = list(call)
    assert call.code() == grpc.StatusCode.OK
    assert [t.status.state for t in rest] == [4]
    got = _get_task(stub, sid, task.metadata.id)
    assert got.status.state == 4
    assert got.status.HasField("completion_time")
    assert [e.code for e in got.status.events] == [0]  # no event for Cancelled (T5)
    assert _get_session(stub, sid).status.cancelled == 1


def test_delete_session_with_active_task_fails(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    session = _create_session(stub, pending_app)
    sid = session.metadata.id
    _create_task(stub, sid, b"x")
    code, details = _status(stub.DeleteSession, frontend_pb2.DeleteSessionRequest(session_id=sid))
    assert code == grpc.StatusCode.INTERNAL
    assert details
    assert _get_session(stub, sid).status.pending == 1  # still there, untouched

    _close(stub, sid)  # the pending task is Cancelled, which still counts as open (S1)
    code, details = _status(stub.DeleteSession, frontend_pb2.DeleteSessionRequest(session_id=sid))
    assert code == grpc.StatusCode.INTERNAL
    assert "cancelled" in details
    assert _get_session(stub, sid).status.cancelled == 1


def test_create_task_ids_and_metadata(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    sid = _create_session(stub, pending_app).metadata.id
    tasks = [_create_task(stub, sid, data) for data in (b"a", None, b"c")]
    assert [t.metadata.id for t in tasks] == ["1", "2", "3"]
    for task in tasks:
        assert task.metadata.name == task.metadata.id
        assert task.spec.session_id == sid
        assert task.status.state == TaskState.Value("Pending")
        assert not task.spec.HasField("output")
        assert not task.status.HasField("completion_time")
        _assert_recent_ms(task.status.creation_time)
    assert tasks[0].spec.input == b"a"
    assert not tasks[1].spec.HasField("input")
    other = _create_session(stub, pending_app).metadata.id
    assert _create_task(stub, other, b"z").metadata.id == "1"


def test_create_task_on_closed_or_unknown_session_is_internal(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    sid = _create_session(stub, pending_app).metadata.id
    _close(stub, sid)
    for target in (sid, _uid("nope")):
        request = frontend_pb2.CreateTaskRequest(task=types_pb2.TaskSpec(session_id=target))
        code, _ = _status(stub.CreateTask, request)
        assert code == grpc.StatusCode.INTERNAL


def test_get_task_errors(stub: frontend_pb2_grpc.FrontendStub, pending_app: str) -> None:
    sid = _create_session(stub, pending_app).metadata.id
    _create_task(stub, sid, b"x")
    code, details = _status(
        stub.GetTask, frontend_pb2.GetTaskRequest(session_id=sid, task_id="abc")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid task id" in details
    code, _ = _status(stub.GetTask, frontend_pb2.GetTaskRequest(session_id=sid, task_id=str(2**63)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # does not parse as an int64
    code, _ = _status(stub.GetTask, frontend_pb2.GetTaskRequest(session_id=sid, task_id="2"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _status(
        stub.GetTask, frontend_pb2.GetTaskRequest(session_id=_uid("nope"), task_id="1")
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_get_task_includes_events_list_task_does_not(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    sid = _create_session(stub, pending_app).metadata.id
    inputs = [b"one", b"two", b"three"]
    for data in inputs:
        _create_task(stub, sid, data)

    got = _get_task(stub, sid, "2")
    assert got.spec.input == b"two"
    assert [e.code for e in got.status.events] == [0]
    _assert_recent_ms(got.status.events[0].creation_time)

    call: Any = stub.ListTask(frontend_pb2.ListTaskRequest(session_id=sid), timeout=RPC_TIMEOUT)
    listed = list(call)
    assert call.code() == grpc.StatusCode.OK
    assert [t.metadata.id for t in listed] == ["1", "2", "3"]
    assert [t.spec.input for t in listed] == inputs
    assert all(len(t.status.events) == 0 for t in listed)
    assert all(t.status.state == TaskState.Value("Pending") for t in listed)


def test_list_task_empty_session(stub: frontend_pb2_grpc.FrontendStub, pending_app: str) -> None:
    sid = _create_session(stub, pending_app).metadata.id
    call: Any = stub.ListTask(frontend_pb2.ListTaskRequest(session_id=sid), timeout=RPC_TIMEOUT)
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK


def test_list_task_unknown_session_is_not_found(stub: frontend_pb2_grpc.FrontendStub) -> None:
    call: Any = stub.ListTask(
        frontend_pb2.ListTaskRequest(session_id=_uid("nope")), timeout=RPC_TIMEOUT
    )
    with pytest.raises(grpc.RpcError):
        list(call)
    assert call.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("task_id", ["abc", "", "1.0"])
def test_watch_task_invalid_id_is_invalid_argument(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str, task_id: str
) -> None:
    sid = _create_session(stub, pending_app).metadata.id
    _create_task(stub, sid, b"x")
    call: Any = stub.WatchTask(
        frontend_pb2.WatchTaskRequest(session_id=sid, task_id=task_id), timeout=RPC_TIMEOUT
    )
    with pytest.raises(grpc.RpcError):
        list(call)
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_unknown_task_or_session_ends_ok_and_empty(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    sid = _create_session(stub, pending_app).metadata.id
    _create_task(stub, sid, b"x")
    for session_id, task_id in ((sid, "99"), (_uid("nope"), "1")):
        messages, code = _watch_all(stub, session_id, task_id, timeout=RPC_TIMEOUT)
        assert messages == []
        assert code == grpc.StatusCode.OK


def test_watch_terminal_task_sends_one_message(
    stub: frontend_pb2_grpc.FrontendStub, pending_app: str
) -> None:
    sid = _create_session(stub, pending_app).metadata.id
    task = _create_task(stub, sid, b"x")
    _close(stub, sid)  # Pending -> Cancelled
    messages, code = _watch_all(stub, sid, task.metadata.id, timeout=RPC_TIMEOUT)
    assert code == grpc.StatusCode.OK
    assert len(messages) == 1
    assert messages[0].metadata.id == task.metadata.id
    assert messages[0].status.state == 4
    assert messages[0].status.HasField("completion_time")


def test_watch_of_a_dropped_session_ends_ok(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    """A session can only be dropped once closed (A1), so its watches have ended; a
    watch of a dropped session ends at once with OK."""
    app = _uid("gone")
    spec = types_pb2.ApplicationSpec(command="/bin/true", max_instances=0)
    assert _register(stub, app, spec).return_code == 0
    sid = _create_session(stub, app, max_instances=0).metadata.id
    task = _create_task(stub, sid, b"x")
    call: Any = stub.WatchTask(
        frontend_pb2.WatchTaskRequest(session_id=sid, task_id=task.metadata.id),
        timeout=RPC_TIMEOUT,
    )
    _close(stub, sid)
    assert next(call).status.state == 4  # Cancelled, terminal: the stream ends
    assert list(call) == []
    stub.UnregisterApplication(
        frontend_pb2.UnregisterApplicationRequest(name=app), timeout=RPC_TIMEOUT
    )
    gone: Any = stub.WatchTask(
        frontend_pb2.WatchTaskRequest(session_id=sid, task_id=task.metadata.id),
        timeout=RPC_TIMEOUT,
    )
    assert list(gone) == []
    assert gone.code() == grpc.StatusCode.OK


# --------------------------------------------------------------------------- real instances


def _run_on_test_app(
    stub: frontend_pb2_grpc.FrontendStub, data: bytes
) -> tuple[str, str, list[types_pb2.Task]]:
    """Run one task on ``flmtest``; return session id, task id and the watch messages."""
    sid = _create_session(stub, flame_testkit.TEST_APP).metadata.id
    task = _create_task(stub, sid, data)
    try:
        messages, code = _watch_all(stub, sid, task.metadata.id)
    finally:
        with contextlib.suppress(grpc.RpcError):  # keep the real failure, if any
            _close(stub, sid)
    assert code == grpc.StatusCode.OK
    assert messages
    states = [m.status.state for m in messages]
    assert states == sorted(states), states  # never goes backwards
    assert all(s not in (2, 3, 4) for s in states[:-1]), states  # only the last is terminal
    assert all(m.metadata.id == task.metadata.id for m in messages)
    return sid, task.metadata.id, messages


def test_watch_task_follows_to_succeed(stub: frontend_pb2_grpc.FrontendStub) -> None:
    sid, tid, messages = _run_on_test_app(stub, b"hello")
    last = messages[-1]
    assert last.status.state == TaskState.Value("Succeed")
    assert last.spec.output == b"echo:hello"
    assert last.spec.input == b"hello"
    _assert_recent_ms(last.status.completion_time)
    assert last.status.completion_time >= last.status.creation_time

    got = _get_task(stub, sid, tid)
    assert got.spec.output == b"echo:hello"
    assert [e.code for e in got.status.events] == [0, 1, 2]
    session = _get_session(stub, sid)
    assert (session.status.succeed, session.status.failed, session.status.running) == (1, 0, 0)


def test_watch_task_failed_has_no_events_but_get_task_does(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    sid, tid, messages = _run_on_test_app(stub, b"fail:boom")
    last = messages[-1]
    assert last.status.state == TaskState.Value("Failed")
    assert all(len(m.status.events) == 0 for m in messages)  # real-server fidelity (§5.4)

    got = _get_task(stub, sid, tid)
    assert got.status.state == TaskState.Value("Failed")
    failed = [e for e in got.status.events if e.code == 3]
    assert len(failed) == 1
    assert "boom" in failed[0].message
    _assert_recent_ms(failed[0].creation_time)
    assert _get_session(stub, sid).status.failed == 1


def test_close_session_with_running_task_is_internal(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    sid = _create_session(stub, flame_testkit.TEST_APP).metadata.id
    task = _create_task(stub, sid, b"sleep:4")
    call: Any = stub.WatchTask(
        frontend_pb2.WatchTaskRequest(session_id=sid, task_id=task.metadata.id),
        timeout=TASK_TIMEOUT,
    )
    try:
        for message in call:
            if message.status.state == TaskState.Value("Running"):
                break
        else:
            pytest.fail("the task never reached Running")
        code, details = _status(stub.CloseSession, frontend_pb2.CloseSessionRequest(session_id=sid))
        assert code == grpc.StatusCode.INTERNAL
        assert details
        assert _get_session(stub, sid).status.state == types_pb2.Open
        rest = list(call)
        assert rest[-1].status.state == TaskState.Value("Succeed")
    finally:
        call.cancel()
    closed = _close(stub, sid)
    assert closed.status.state == types_pb2.Closed
    assert closed.status.succeed == 1


def test_bind_failure_is_visible_on_the_session(stub: frontend_pb2_grpc.FrontendStub) -> None:
    app = _uid("nobin")
    spec = types_pb2.ApplicationSpec(command=f"/nonexistent/{app}")
    assert _register(stub, app, spec).return_code == 0
    sid = _create_session(stub, app).metadata.id
    task = _create_task(stub, sid, b"x")

    messages, code = _watch_all(stub, sid, task.metadata.id, timeout=60.0)

    assert code == grpc.StatusCode.OK
    assert messages[-1].status.state == TaskState.Value("Failed")
    session = _get_session(stub, sid)
    codes = [e.code for e in session.status.events]
    assert codes.count(1002) == 1
    assert codes.count(1001) >= 1
    assert codes.index(1002) > codes.index(1001)
    assert all(app in e.message for e in session.status.events if e.code == 1001)
    failed = [e for e in _get_task(stub, sid, task.metadata.id).status.events if e.code == 3]
    assert sid in failed[0].message
    _close(stub, sid)


# --------------------------------------------------------------------------- nodes


def test_list_nodes_returns_one_ready_node(stub: frontend_pb2_grpc.FrontendStub) -> None:
    nodes = stub.ListNodes(frontend_pb2.ListNodesRequest(), timeout=RPC_TIMEOUT).nodes
    assert len(nodes) == 1
    node = nodes[0]
    assert node.status.state == types_pb2.Ready
    assert node.metadata.id == node.metadata.name == node.spec.hostname
    assert node.metadata.name
    assert len(node.status.addresses) == 0
    assert node.status.last_heartbeat_time == 0
    assert node.status.capacity.cpu >= 1
    got = stub.GetNode(frontend_pb2.GetNodeRequest(name=node.metadata.name), timeout=RPC_TIMEOUT)
    assert got.node == node
    code, _ = _status(stub.GetNode, frontend_pb2.GetNodeRequest(name=_uid("nonode")))
    assert code == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- malformed requests

GARBAGE = b"\xff\xff\xff\xff\x0f"
"""Bytes that are no protobuf message: a field key whose varint never ends."""


def _identity(data: bytes) -> bytes:
    return data


def _send_raw(channel: grpc.Channel, path: str, body: bytes, *, streaming: bool) -> None:
    """Call ``path`` with ``body`` as the request bytes, exactly as given."""
    if streaming:
        stream = channel.unary_stream(
            path, request_serializer=_identity, response_deserializer=_identity
        )
        list(stream(body, timeout=RPC_TIMEOUT))
    else:
        unary = channel.unary_unary(
            path, request_serializer=_identity, response_deserializer=_identity
        )
        unary(body, timeout=RPC_TIMEOUT)


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("RegisterApplication", False),
        ("GetApplication", False),
        ("CreateTask", False),
        ("WatchTask", True),
        ("ListTask", True),
    ],
)
def test_unparsable_request_is_invalid_argument(
    cluster: flame_testkit.ClusterThread, method: str, streaming: bool
) -> None:
    target = cluster.endpoint.removeprefix("http://")
    path = f"/flame.v1.Frontend/{method}"
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        with pytest.raises(grpc.RpcError) as info:
            _send_raw(channel, path, GARBAGE, streaming=streaming)
        error: Any = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert path in error.details()
        assert f"flame.v1.{method}Request" in error.details()
        # The server is unharmed: a well-formed call on the same channel still works.
        nodes = frontend_pb2_grpc.FrontendStub(channel).ListNodes(  # type: ignore[no-untyped-call]
            frontend_pb2.ListNodesRequest(), timeout=RPC_TIMEOUT
        )
        assert len(nodes.nodes) == 1
