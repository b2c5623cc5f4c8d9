"""The local cluster behaves as a real Flame cluster (flame-server-semantics.md).

One test per row that the testkit follows, named for the row.  The rows it does not
follow are listed in docs/compatibility.md, each with its reason and its test.
Everything goes over the wire, with the raw generated stubs, to a cluster whose
instances are real processes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import flamepy
from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy.proto import frontend_pb2 as fe
from flamepy.proto import frontend_pb2_grpc, types_pb2

RPC = 10.0
WAIT = 60.0
TaskState = types_pb2.TaskState
TERMINAL = (TaskState.Succeed, TaskState.Failed, TaskState.Cancelled)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterThread]:
    config = LocalClusterConfig(capacity=2, delay_release=1, kill_grace=2.0, test_app=True)
    with ClusterThread(config) as thread:
        yield thread
    assert thread.leftover_processes() == []


@pytest.fixture(scope="module")
def stub(cluster: ClusterThread) -> Iterator[frontend_pb2_grpc.FrontendStub]:
    with grpc.insecure_channel(cluster.endpoint) as channel:
        grpc.channel_ready_future(channel).result(timeout=RPC)
        yield frontend_pb2_grpc.FrontendStub(channel)  # type: ignore[no-untyped-call]


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _app(stub: frontend_pb2_grpc.FrontendStub, **spec: Any) -> str:
    """A copy of flmtest under a new name."""
    base = stub.GetApplication(fe.GetApplicationRequest(name="flmtest"), timeout=RPC).spec
    app = types_pb2.ApplicationSpec(command=base.command, arguments=base.arguments, **spec)
    name = _uid("app")
    result = stub.RegisterApplication(
        fe.RegisterApplicationRequest(name=name, application=app), timeout=RPC
    )
    assert result.return_code == 0, result.message
    return name


def _session(stub: frontend_pb2_grpc.FrontendStub, app: str, **spec: Any) -> str:
    sid = _uid(app)
    stub.CreateSession(
        fe.CreateSessionRequest(
            session_id=sid, session=types_pb2.SessionSpec(application=app, **spec)
        ),
        timeout=RPC,
    )
    return sid


def _task(stub: frontend_pb2_grpc.FrontendStub, sid: str, data: bytes) -> str:
    task = stub.CreateTask(
        fe.CreateTaskRequest(task=types_pb2.TaskSpec(session_id=sid, input=data)), timeout=RPC
    )
    return str(task.metadata.id)


def _get(stub: frontend_pb2_grpc.FrontendStub, sid: str, tid: str) -> types_pb2.Task:
    task: types_pb2.Task = stub.GetTask(fe.GetTaskRequest(session_id=sid, task_id=tid), timeout=RPC)
    return task


def _wait(stub: frontend_pb2_grpc.FrontendStub, sid: str, tid: str) -> types_pb2.Task:
    deadline = time.monotonic() + WAIT
    while True:
        task = _get(stub, sid, tid)
        if task.status.state in TERMINAL:
            return task
        assert time.monotonic() < deadline, f"task {sid}/{tid} did not end"
        time.sleep(0.05)


def _close(stub: frontend_pb2_grpc.FrontendStub, sid: str) -> types_pb2.Session:
    session: types_pb2.Session = stub.CloseSession(
        fe.CloseSessionRequest(session_id=sid), timeout=RPC
    )
    return session


def _unregister(stub: frontend_pb2_grpc.FrontendStub, name: str) -> types_pb2.Result:
    result: types_pb2.Result = stub.UnregisterApplication(
        fe.UnregisterApplicationRequest(name=name), timeout=RPC
    )
    return result


def _code(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=RPC)
    err: Any = info.value
    return err.code(), err.details()


# -- applications ---------------------------------------------------------------------


def test_a1_unregister_with_open_sessions_is_refused_and_drops_nothing(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    app = _app(stub)
    sid = _session(stub, app, max_instances=0)
    _task(stub, sid, b"x")
    result = _unregister(stub, app)
    assert result.return_code == -1
    assert result.message == "1 open sessions in the application"
    assert stub.GetSession(fe.GetSessionRequest(session_id=sid), timeout=RPC).status.state == (
        types_pb2.Open
    )
    _close(stub, sid)
    assert _unregister(stub, app).return_code == 0
    code, _ = _code(stub.GetApplication, fe.GetApplicationRequest(name=app))
    assert code == grpc.StatusCode.NOT_FOUND


def test_a2_unregister_of_an_unknown_application_succeeds(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    assert _unregister(stub, _uid("never-registered")).return_code == 0


def test_a3_update_with_open_sessions_is_refused(stub: frontend_pb2_grpc.FrontendStub) -> None:
    app = _app(stub)
    sid = _session(stub, app, max_instances=0)
    spec = stub.GetApplication(fe.GetApplicationRequest(name=app), timeout=RPC).spec
    spec.description = "changed"
    request = fe.UpdateApplicationRequest(name=app, application=spec)
    refused = stub.UpdateApplication(request, timeout=RPC)
    assert (refused.return_code, refused.message) == (-1, "1 open sessions in the application")
    _close(stub, sid)
    assert stub.UpdateApplication(request, timeout=RPC).return_code == 0
    assert _unregister(stub, app).return_code == 0


def test_a4_image_and_shim_are_not_stored(stub: frontend_pb2_grpc.FrontendStub) -> None:
    app = _app(stub, image="registry/img:1")
    spec = stub.GetApplication(fe.GetApplicationRequest(name=app), timeout=RPC).spec
    assert not spec.HasField("image")
    assert spec.shim == types_pb2.Host
    assert _unregister(stub, app).return_code == 0


def test_a5_default_applications_are_a_real_clusters() -> None:
    with ClusterThread(LocalClusterConfig(delay_release=1)) as cluster:
        conn = flamepy.Connection.connect(cluster.endpoint)
        try:
            assert {a.name for a in conn.list_applications()} == {"flmexec", "flmping", "flmrun"}
            with conn.create_session(flamepy.SessionAttributes(application="flmping")) as ping:
                assert ping.invoke(b"hi", timeout=WAIT) == b"hi"
                assert ping.invoke(None, timeout=WAIT) == b"pong"
        finally:
            conn.close()
    assert cluster.leftover_processes() == []


# -- sessions ---------------------------------------------------------------------------


def test_s1_delete_only_a_closed_session_whose_tasks_all_ended(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    ran = _session(stub, "flmtest")
    _wait(stub, ran, _task(stub, ran, b"hello"))
    code, details = _code(stub.DeleteSession, fe.DeleteSessionRequest(session_id=ran))
    assert code == grpc.StatusCode.INTERNAL and "close it" in details  # still open
    _close(stub, ran)
    deleted = stub.DeleteSession(fe.DeleteSessionRequest(session_id=ran), timeout=RPC)
    assert deleted.status.succeed == 1
    # Closed with a pending task: it is Cancelled, which counts as open, forever.
    stuck = _session(stub, "flmtest", max_instances=0)
    _task(stub, stuck, b"never")
    _close(stub, stuck)
    code, details = _code(stub.DeleteSession, fe.DeleteSessionRequest(session_id=stuck))
    assert code == grpc.StatusCode.INTERNAL and "cancelled" in details


def test_s3_only_the_sessions_max_instances_bounds_it(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    capped = _app(stub, max_instances=1)  # not enforced: the session's 2 is
    sid = _session(stub, capped, max_instances=2)
    tids = [_task(stub, sid, b"span:1.5") for _ in range(2)]
    spans = [_wait(stub, sid, t).spec.output.decode().split(":") for t in tids]
    (pid1, s1, e1), (pid2, s2, e2) = spans
    assert pid1 != pid2 and float(s2) < float(e1) and float(s1) < float(e2)  # side by side
    _close(stub, sid)
    none = _session(stub, "flmtest", max_instances=0)
    tid = _task(stub, none, b"x")
    time.sleep(1.0)
    assert _get(stub, none, tid).status.state == TaskState.Pending
    executors = stub.ListExecutor(fe.ListExecutorRequest(), timeout=RPC).executors
    assert not [e for e in executors if e.spec.session_id == none]
    _close(stub, none)
    assert _unregister(stub, capped).return_code == 0


@pytest.mark.parametrize(
    ("resreq", "words"),
    [({"gpu": 1}, "GPU"), ({"cpu": 64, "memory": 1}, "CPU"), ({"memory": 2**62}, "memory")],
)
def test_s5_a_resreq_no_node_can_hold_fails_visibly(
    stub: frontend_pb2_grpc.FrontendStub, resreq: dict[str, int], words: str
) -> None:
    """A real cluster leaves such tasks Pending forever; here they fail, saying why."""
    spec = {"cpu": 1, "memory": 1024, "gpu": 0, **resreq}
    sid = _session(stub, "flmtest", resreq=types_pb2.ResourceRequirement(**spec))
    task = _wait(stub, sid, _task(stub, sid, b"x"))
    assert task.status.state == TaskState.Failed
    assert words in task.status.events[-1].message
    _close(stub, sid)


def test_s5_instances_take_their_cpus_from_the_node(stub: frontend_pb2_grpc.FrontendStub) -> None:
    """Two CPUs on this node: one instance asking for 2 leaves no room for a second."""
    sid = _session(stub, "flmtest", resreq=types_pb2.ResourceRequirement(cpu=2, memory=1024))
    tids = [_task(stub, sid, b"span:1") for _ in range(2)]
    first, second = (_wait(stub, sid, t).spec.output.decode().split(":") for t in tids)
    assert float(second[1]) >= float(first[2])  # one after the other
    _close(stub, sid)


def test_s6_a_higher_priority_session_gets_the_next_instance() -> None:
    """One slot, busy; a low- then a high-priority session wait for it: high goes first."""
    config = LocalClusterConfig(capacity=1, delay_release=30, test_app=True)
    with ClusterThread(config) as c, grpc.insecure_channel(c.endpoint) as channel:
        stub = frontend_pb2_grpc.FrontendStub(channel)  # type: ignore[no-untyped-call]
        busy = _session(stub, "flmtest")
        first = _task(stub, busy, b"sleep:1.5")
        low = _session(stub, "flmtest", priority=0)
        high = _session(stub, "flmtest", priority=5)
        low_task = _task(stub, low, b"span:0.2")
        high_task = _task(stub, high, b"span:0.2")
        _wait(stub, busy, first)
        high_start = float(_wait(stub, high, high_task).spec.output.decode().split(":")[1])
        low_start = float(_wait(stub, low, low_task).spec.output.decode().split(":")[1])
        assert high_start < low_start
        for sid in (busy, low, high):
            _close(stub, sid)
    assert c.leftover_processes() == []


def test_s7_times_are_whole_seconds(stub: frontend_pb2_grpc.FrontendStub) -> None:
    sid = _session(stub, "flmtest")
    task = _wait(stub, sid, _task(stub, sid, b"x"))
    session = _close(stub, sid)
    times = [
        task.status.creation_time,
        task.status.completion_time,
        session.status.creation_time,
        session.status.completion_time,
    ]
    assert all(t > 0 and t % 1000 == 0 for t in times), times


# -- tasks ------------------------------------------------------------------------------


def test_t1_watch_task_does_not_send_the_current_state_first(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    sid = _session(stub, "flmtest", max_instances=0)
    tid = _task(stub, sid, b"x")
    stream = stub.WatchTask(fe.WatchTaskRequest(session_id=sid, task_id=tid), timeout=1.0)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stream))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # nothing was sent
    _close(stub, sid)  # Cancelled: terminal, so sent at once
    messages = list(stub.WatchTask(fe.WatchTaskRequest(session_id=sid, task_id=tid), timeout=RPC))
    assert [m.status.state for m in messages] == [TaskState.Cancelled]


def test_t2_an_output_over_4_mib_fails_the_task_and_keeps_the_instance(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    sid = _session(stub, "flmtest", max_instances=1)
    before = _wait(stub, sid, _task(stub, sid, b"pid")).spec.output
    big = _wait(stub, sid, _task(stub, sid, f"big:{4 * 1024 * 1024 + 1}".encode()))
    assert big.status.state == TaskState.Failed
    assert "4 MiB" in big.status.events[-1].message
    fits = _wait(stub, sid, _task(stub, sid, f"big:{3 * 1024 * 1024}".encode()))
    assert fits.status.state == TaskState.Succeed
    assert _wait(stub, sid, _task(stub, sid, b"pid")).spec.output == before
    _close(stub, sid)


def test_t3_inputs_over_4_mib_are_refused_over_grpc_and_in_process(
    cluster: ClusterThread, stub: frontend_pb2_grpc.FrontendStub
) -> None:
    sid = _session(stub, "flmtest", max_instances=0)
    big = b"x" * (4 * 1024 * 1024 + 1)
    code, _ = _code(
        stub.CreateTask, fe.CreateTaskRequest(task=types_pb2.TaskSpec(session_id=sid, input=big))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    spec = types_pb2.SessionSpec(application="flmtest", common_data=big)
    code, _ = _code(stub.CreateSession, fe.CreateSessionRequest(session_id="big", session=spec))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _close(stub, sid)
    with ClusterThread(LocalClusterConfig(in_process=True, test_app=True)) as inproc:
        conn = flamepy.Connection.connect(inproc.endpoint)
        try:
            attrs = flamepy.SessionAttributes(application="flmtest")
            with (
                conn.create_session(attrs) as ssn,
                pytest.raises(flamepy.InvalidArgumentError, match="4 MiB"),
            ):
                ssn.create_task(big)
        finally:
            conn.close()


def test_t5_event_texts(stub: frontend_pb2_grpc.FrontendStub) -> None:
    sid = _session(stub, "flmtest")
    task = _wait(stub, sid, _task(stub, sid, b"x"))
    assert [(e.code, e.message) for e in task.status.events] == [
        (TaskState.Pending, "Task was created with state <Pending>"),
        (TaskState.Running, "Task state was updated to <Running>"),
        (TaskState.Succeed, "Task was completed with state <Succeed>"),
    ]
    _close(stub, sid)
    pending = _session(stub, "flmtest", max_instances=0)
    tid = _task(stub, pending, b"x")
    _close(stub, pending)
    cancelled = _get(stub, pending, tid)
    assert cancelled.status.state == TaskState.Cancelled
    assert [e.code for e in cancelled.status.events] == [TaskState.Pending]  # none for it


def test_t5_bind_failure_event_text(stub: frontend_pb2_grpc.FrontendStub) -> None:
    app = _uid("broken")
    spec = types_pb2.ApplicationSpec(command="/nonexistent/program")
    stub.RegisterApplication(fe.RegisterApplicationRequest(name=app, application=spec), timeout=RPC)
    sid = _session(stub, app)
    _wait(stub, sid, _task(stub, sid, b"x"))
    events = stub.GetSession(fe.GetSessionRequest(session_id=sid), timeout=RPC).status.events
    first = next(e for e in events if e.code == 1001)
    assert first.message.startswith("Executor ")
    assert " on node local failed to bind session with return_code 11: " in first.message
    _close(stub, sid)
    assert _unregister(stub, app).return_code == 0


# -- instances --------------------------------------------------------------------------


def test_i1_a_dead_instance_fails_its_task_visibly_and_is_replaced(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    """A real executor stays bound to the dead channel and fails every later task."""
    sid = _session(stub, "flmtest", max_instances=1)
    died = _wait(stub, sid, _task(stub, sid, b"exit:3"))
    assert died.status.state == TaskState.Failed
    assert "exited with code 3" in died.status.events[-1].message
    after = _wait(stub, sid, _task(stub, sid, b"again"))
    assert (after.status.state, after.spec.output) == (TaskState.Succeed, b"echo:again")
    _close(stub, sid)


def test_flmexec_runs_python_and_shell_scripts(
    cluster: ClusterThread, stub: frontend_pb2_grpc.FrontendStub
) -> None:
    sid = _session(stub, "flmexec", common_data=json.dumps({"language": "shell"}).encode())

    def run(**task: Any) -> types_pb2.Task:
        return _wait(stub, sid, _task(stub, sid, json.dumps(task).encode()))

    py = run(language="python", code="import sys; print(sys.stdin.read()[::-1])", input=list(b"ab"))
    assert bytes(json.loads(py.spec.output)["data"]) == b"ba\n"
    sh = run(code="echo $((6 * 7)); pwd")  # the session's default language
    out = bytes(json.loads(sh.spec.output)["data"]).decode().split()
    assert out[0] == "42" and out[1].startswith(str(cluster.cluster.work_dir))  # its own dir
    failed = run(language="python", code="import sys; sys.exit('no way')")
    assert failed.status.state == TaskState.Failed
    assert "exited with code 1: no way" in failed.status.events[-1].message
    slow = run(language="shell", code="sleep 30", runtime=1)
    assert slow.status.state == TaskState.Failed
    assert "ran out of time (1s)" in slow.status.events[-1].message
    bad = run(language="cobol", code="x")
    assert "unsupported language 'cobol'" in bad.status.events[-1].message
    _close(stub, sid)


def test_s8_closed_sessions_are_kept_not_evicted(stub: frontend_pb2_grpc.FrontendStub) -> None:
    """Not followed (docs/compatibility.md, S8): the local cluster has no
    ``limits.max_sessions``; a closed session stays readable."""
    ids = [_session(stub, "flmtest", max_instances=0) for _ in range(60)]
    for sid in ids:
        _close(stub, sid)
    first = stub.GetSession(fe.GetSessionRequest(session_id=ids[0]), timeout=RPC)
    assert first.status.state == types_pb2.Closed
    listed = {
        s.metadata.id for s in stub.ListSession(fe.ListSessionRequest(), timeout=RPC).sessions
    }
    assert set(ids) <= listed


def test_an_unexpected_bind_error_counts_toward_the_retry_limit(
    stub: frontend_pb2_grpc.FrontendStub,
) -> None:
    """Issue 20, case 1: a bind that fails with an unexpected error (here: a working
    directory that cannot be made) is retried with backoff up to the retry limit,
    not forever, and the task fails saying why."""
    app = _uid("badwd")
    spec = types_pb2.ApplicationSpec(command="/bin/true", working_directory="/proc/nonexistent/wd")
    stub.RegisterApplication(fe.RegisterApplicationRequest(name=app, application=spec), timeout=RPC)
    sid = _session(stub, app)
    task = _wait(stub, sid, _task(stub, sid, b"x"))
    assert task.status.state == TaskState.Failed
    assert "/proc/nonexistent/wd" in task.status.events[-1].message
    events = stub.GetSession(fe.GetSessionRequest(session_id=sid), timeout=RPC).status.events
    assert [e.code for e in events].count(1001) == 5  # the default retry limit
    assert [e.code for e in events].count(1002) == 1
    assert "return_code 19" in events[0].message and "Traceback" not in events[0].message
    _close(stub, sid)
    assert _unregister(stub, app).return_code == 0
