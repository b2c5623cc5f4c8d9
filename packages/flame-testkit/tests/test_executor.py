"""The local executor manager: launch contract, limits, lifecycle and failures.

Each test drives real instance processes through a real local cluster.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy import Connection, SessionAttributes, TaskFailedError

WAIT = 60.0
DELAY_RELEASE = 1

RECORDER = """
import atexit, os, sys
from pathlib import Path
from flmrun import FlameService

LOG = Path(os.environ["REC_FILE"])

def note(text):
    with LOG.open("a") as fh:
        fh.write(f"{os.getpid()} {text}\\n")

class Recorder(FlameService):
    def __init__(self):
        atexit.register(note, "exit")
        print(f"recorder-pid {os.getpid()}", file=sys.stderr, flush=True)
    def on_session_enter(self, context):
        note("enter")
    def on_task_invoke(self, context):
        note("task")
        return b"ok"
    def on_session_leave(self):
        note("leave")
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterThread]:
    config = LocalClusterConfig(
        capacity=2,
        delay_release=DELAY_RELEASE,
        retry_limit=3,
        kill_grace=5.0,  # flmrun exits well within it; the orphan test waits it out
        work_dir=tmp_path_factory.mktemp("work"),
        test_app=True,
    )
    with ClusterThread(config) as c:
        yield c
    assert c.leftover_processes() == []


@pytest.fixture(scope="module")
def conn(cluster: ClusterThread) -> Iterator[Connection]:
    with Connection.connect(cluster.endpoint) as c:
        yield c


def _eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _app(conn: Connection, **attrs: object) -> str:
    name = f"app-{uuid.uuid4().hex[:8]}"
    attrs.setdefault("command", sys.executable)
    attrs.setdefault("arguments", ["-m", "flame_testkit._testapp"])
    conn.register_application(name, attrs)
    return name


def _session(conn: Connection, app: str = "flmtest", **kw: object):  # type: ignore[no-untyped-def]
    return conn.create_session(SessionAttributes(application=app, **kw))  # type: ignore[arg-type]


def test_launch_contract_environment(conn: Connection, cluster: ClusterThread) -> None:
    ssn = _session(conn)
    try:
        get = lambda name: ssn.invoke(f"env:{name}".encode(), timeout=WAIT).decode()  # noqa: E731
        socket_path = get("FLAME_INSTANCE_ENDPOINT")
        assert os.path.isabs(socket_path) and socket_path.endswith(".sock")
        assert get("FLAME_ENDPOINT") == cluster.endpoint
        assert get("FLAME_LOG") == get("RUST_LOG") == "info"
        assert get("TMPDIR").endswith("/work/flmtest/tmp") and get("TEMP") == get("TMPDIR")
        assert get("HOME") == os.environ["HOME"]
        pid = ssn.invoke(b"pid", timeout=WAIT)
        assert ssn.invoke(b"pgid", timeout=WAIT) == pid  # its own process group
    finally:
        conn.close_session(ssn.id)


def test_application_environment_is_expanded(conn: Connection) -> None:
    app = _app(
        conn,
        environments={"GREETING": "hi-${HOME}", "KEEP": "$NO_SUCH_VAR_X", "TMPDIR": "/tmp"},
    )
    ssn = _session(conn, app)
    try:
        assert ssn.invoke(b"env:GREETING", timeout=WAIT) == f"hi-{os.environ['HOME']}".encode()
        assert ssn.invoke(b"env:KEEP", timeout=WAIT) == b"$NO_SUCH_VAR_X"
        assert ssn.invoke(b"env:TMPDIR", timeout=WAIT) == b"/tmp"  # the app's own value wins
    finally:
        conn.close_session(ssn.id)
        conn.unregister_application(app)


def test_working_directory_and_captured_output(
    conn: Connection, cluster: ClusterThread, tmp_path: Path
) -> None:
    workdir = tmp_path / "wd"
    app = _app(conn, working_directory=str(workdir))
    ssn = _session(conn, app)
    try:
        assert ssn.invoke(b"cwd", timeout=WAIT) == str(workdir).encode()
        marker = f"marker-{uuid.uuid4().hex}"
        assert ssn.invoke(f"print:{marker}".encode(), timeout=WAIT) == b"printed"
        logs = cluster.cluster.work_dir / "logs"
        _eventually(lambda: any(marker in p.read_text() for p in logs.glob("*.out")))
        assert any(marker in p.read_text() for p in logs.glob("*.err"))
    finally:
        conn.close_session(ssn.id)
    _eventually(lambda: not (workdir / "work" / app).exists())
    assert workdir.is_dir()  # a configured working directory is kept
    conn.unregister_application(app)


def test_private_process_directory_is_removed(conn: Connection) -> None:
    ssn = _session(conn)
    cwd = Path(ssn.invoke(b"cwd", timeout=WAIT).decode())
    assert cwd.is_dir()
    conn.close_session(ssn.id)
    _eventually(lambda: not cwd.exists())


def _spans(outputs: list[bytes]) -> dict[str, list[tuple[float, float]]]:
    spans: dict[str, list[tuple[float, float]]] = {}
    for out in outputs:
        pid, start, end = out.decode().split(":")
        spans.setdefault(pid, []).append((float(start), float(end)))
    return spans


def _assert_sequential(spans: list[tuple[float, float]]) -> None:
    ordered = sorted(spans)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert start >= end, "an instance ran two tasks at once"


def test_one_task_at_a_time_per_instance_and_max_instances(conn: Connection) -> None:
    ssn = _session(conn, min_instances=2, max_instances=2)
    try:
        # Both instances bound and idle first, so that both must take tasks.
        _eventually(
            lambda: (
                len(
                    [
                        e
                        for e in conn.list_executors()
                        if e.session_id == ssn.id and e.state.name == "BOUND"
                    ]
                )
                == 2
            ),
            60,
        )
        outputs = [f.result(WAIT) for f in [ssn.run(b"span:0.1") for _ in range(12)]]
        assert len([e for e in conn.list_executors() if e.session_id == ssn.id]) <= 2
    finally:
        conn.close_session(ssn.id)
    spans = _spans(outputs)
    assert len(spans) == 2
    for per_pid in spans.values():
        _assert_sequential(per_pid)


def test_the_sessions_max_instances_caps_it(conn: Connection) -> None:
    """Only the session's max_instances bounds it, as on a real cluster (S3; the
    application's is not enforced, see test_semantics.py)."""
    ssn = _session(conn, max_instances=1)
    try:
        outputs = [f.result(WAIT) for f in [ssn.run(f"who:{i}".encode()) for i in range(20)]]
    finally:
        conn.close_session(ssn.id)
    assert len({o.split(b":")[0] for o in outputs}) == 1


def test_min_instances_are_kept_while_idle(conn: Connection) -> None:
    ssn = _session(conn, min_instances=1)
    try:
        _eventually(lambda: len([e for e in conn.list_executors() if e.session_id == ssn.id]) == 1)
        time.sleep(DELAY_RELEASE + 1.0)  # past delay_release: still kept
        assert len([e for e in conn.list_executors() if e.session_id == ssn.id]) == 1
    finally:
        conn.close_session(ssn.id)
    _eventually(lambda: not [e for e in conn.list_executors() if e.session_id == ssn.id])


def test_idle_instances_are_released_after_delay_release(conn: Connection) -> None:
    ssn = _session(conn)
    try:
        ssn.invoke(b"x", timeout=WAIT)
        assert [e for e in conn.list_executors() if e.session_id == ssn.id]
        _eventually(lambda: not [e for e in conn.list_executors() if e.session_id == ssn.id], 10)
        assert ssn.invoke(b"y", timeout=WAIT) == b"echo:y"  # a new instance serves it
    finally:
        conn.close_session(ssn.id)


def test_node_capacity_is_shared_between_sessions(conn: Connection) -> None:
    sessions = [_session(conn) for _ in range(3)]
    try:
        futures = [s.run(b"span:0.05") for _ in range(6) for s in sessions]
        outputs = [f.result(WAIT) for f in futures]
        assert max(len(conn.list_executors()), 0) <= 2
    finally:
        for s in sessions:
            conn.close_session(s.id)
    spans = [span for per_pid in _spans(outputs).values() for span in per_pid]
    # capacity 2: at no moment did three tasks run at once
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in sorted(events, key=lambda x: (x[0], x[1])):
        running += delta
        peak = max(peak, running)
    assert peak <= 2


def test_crash_fails_the_task_and_replaces_the_instance(conn: Connection) -> None:
    ssn = _session(conn, max_instances=1)
    try:
        before = ssn.invoke(b"pid", timeout=WAIT)
        with pytest.raises(TaskFailedError, match="exited with code 9"):
            ssn.invoke(b"exit:9", timeout=WAIT)
        assert ssn.invoke(b"ok", timeout=WAIT) == b"echo:ok"
        assert ssn.invoke(b"pid", timeout=WAIT) != before
    finally:
        conn.close_session(ssn.id)


def test_bind_failures_record_events_and_fail_pending_tasks(conn: Connection) -> None:
    app = _app(conn, command="/nonexistent/flame-binary", arguments=[])
    ssn = _session(conn, app)
    try:
        with pytest.raises(TaskFailedError) as info:
            ssn.invoke(b"never", timeout=WAIT)
        assert "/nonexistent/flame-binary" in info.value.message
        assert "after 3 attempts" in info.value.message
        codes = [e.code for e in conn.get_session(ssn.id).events]
        assert codes == [1001, 1001, 1001, 1002]
        # the retry limit is final for the session: new tasks fail, nothing hangs
        with pytest.raises(TaskFailedError):
            ssn.invoke(b"later", timeout=WAIT)
    finally:
        conn.close_session(ssn.id)
        conn.unregister_application(app)


def test_enter_failure_is_a_bind_failure_with_the_instance_message(conn: Connection) -> None:
    ssn = _session(conn, common_data=b"fail-enter")
    try:
        with pytest.raises(TaskFailedError, match="enter refused"):
            ssn.invoke(b"x", timeout=WAIT)
        events = conn.get_session(ssn.id).events
        assert events[0].code == 1001 and "on_session_enter failed" in (events[0].message or "")
    finally:
        conn.close_session(ssn.id)


def test_enter_once_then_leave_then_sigterm(
    conn: Connection, cluster: ClusterThread, tmp_path: Path
) -> None:
    (tmp_path / "recsvc.py").write_text(RECORDER)
    log = tmp_path / "rec.log"
    app = _app(
        conn,
        arguments=["-m", "flmrun", "--service", "recsvc:Recorder"],
        environments={"PYTHONPATH": str(tmp_path), "REC_FILE": str(log)},
    )
    ssn = _session(conn, app, max_instances=1)
    try:
        assert [ssn.invoke(b"t", timeout=WAIT) for _ in range(3)] == [b"ok"] * 3
    finally:
        conn.close_session(ssn.id)
    _eventually(lambda: log.exists() and "exit" in log.read_text())
    lines = [ln.split(" ", 1) for ln in log.read_text().splitlines()]
    assert len({pid for pid, _ in lines}) == 1
    assert [what for _, what in lines] == ["enter", "task", "task", "task", "leave", "exit"]
    marker = f"recorder-pid {lines[0][0]}"
    errs = [p.read_text() for p in (cluster.cluster.work_dir / "logs").glob("*.err")]
    stderr = next(text for text in errs if marker in text)
    assert "received SIGTERM" in stderr  # released by SIGTERM, after leave
    conn.unregister_application(app)


def test_processes_ignoring_sigterm_are_killed(conn: Connection) -> None:
    ssn = _session(conn)
    orphan = int(ssn.invoke(b"orphan", timeout=WAIT))
    conn.close_session(ssn.id)

    def gone() -> bool:
        try:
            os.kill(orphan, 0)
        except ProcessLookupError:
            return True
        return False

    _eventually(gone, 15)


# -- the task stream ------------------------------------------------------------------
# flmrun runs a task that came over its task stream on the stream's connection thread
# ("flmrun-tasks"), and one that came over gRPC on its worker thread ("flmrun-worker"),
# so the test app's "thread" command tells which transport the executor used.


def test_tasks_ride_the_task_stream_when_the_instance_serves_it(conn: Connection) -> None:
    ssn = _session(conn, max_instances=1)
    try:
        assert ssn.invoke(b"thread", timeout=WAIT) == b"flmrun-tasks"
        with pytest.raises(TaskFailedError, match="RuntimeError: over the stream"):
            ssn.invoke(b"fail:over the stream", timeout=WAIT)
        big = b"x" * (3 * 1024 * 1024)  # several reads and writes on the socket
        assert ssn.invoke(big, timeout=WAIT) == b"echo:" + big
        stream = Path(ssn.invoke(b"env:FLMRUN_TASK_STREAM", timeout=WAIT).decode())
        sock = Path(ssn.invoke(b"env:FLAME_INSTANCE_ENDPOINT", timeout=WAIT).decode())
        assert stream.parent == sock.parent and stream.name.endswith(".tasks")
        assert stream.is_socket()
    finally:
        conn.close_session(ssn.id)
    _eventually(lambda: not stream.exists() and not sock.exists())


def test_an_instance_that_ignores_the_offer_is_driven_over_grpc(conn: Connection) -> None:
    # The same instance program, started without the offer in its environment: it
    # serves only gRPC, as Flame's own runpy would.
    app = _app(
        conn,
        command="env",
        arguments=["-u", "FLMRUN_TASK_STREAM", sys.executable, "-m", "flame_testkit._testapp"],
    )
    ssn = _session(conn, app, max_instances=1)
    try:
        assert ssn.invoke(b"thread", timeout=WAIT) == b"flmrun-worker"
        assert ssn.invoke(b"env:FLMRUN_TASK_STREAM", timeout=WAIT) == b""
        with pytest.raises(TaskFailedError, match="exited with code 7"):
            ssn.invoke(b"exit:7", timeout=WAIT)
        assert ssn.invoke(b"ok", timeout=WAIT) == b"echo:ok"
    finally:
        conn.close_session(ssn.id)


def test_with_the_task_stream_off_every_call_is_grpc(tmp_path: Path) -> None:
    config = LocalClusterConfig(
        capacity=1, delay_release=DELAY_RELEASE, task_stream=False, work_dir=tmp_path, test_app=True
    )
    with ClusterThread(config) as c, Connection.connect(c.endpoint) as conn:
        ssn = _session(conn, max_instances=1)
        assert ssn.invoke(b"thread", timeout=WAIT) == b"flmrun-worker"
        assert ssn.invoke(b"env:FLMRUN_TASK_STREAM", timeout=WAIT) == b""
        sock = Path(ssn.invoke(b"env:FLAME_INSTANCE_ENDPOINT", timeout=WAIT).decode())
        assert list(sock.parent.glob("*.tasks")) == []
        conn.close_session(ssn.id)
    assert c.leftover_processes() == []
