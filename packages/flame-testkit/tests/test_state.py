"""Unit tests of the pure session-manager state machine (flame-wire.md §1, §3, §5.4).

No servers, no sockets, no asyncio: :class:`ClusterState` is driven directly, the way
the servicer and the executor manager drive it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from flame_testkit._state import (
    EVENT_BIND_FAILED,
    EVENT_RETRY_LIMIT,
    AlreadyExists,
    ClusterState,
    InvalidArgument,
    InvalidName,
    NotFound,
    SessionRecord,
    StateError,
    TaskRecord,
    TaskState,
    parse_task_id,
)
from flamepy.proto import types_pb2

APP = "app"
GIB = 1024**3


def _app_spec(**kwargs: Any) -> types_pb2.ApplicationSpec:
    kwargs.setdefault("command", "/bin/true")
    return types_pb2.ApplicationSpec(**kwargs)


def _session_spec(application: str = APP, **kwargs: Any) -> types_pb2.SessionSpec:
    return types_pb2.SessionSpec(application=application, **kwargs)


@pytest.fixture
def state() -> ClusterState:
    st = ClusterState(retry_limit=3)
    st.register_application(APP, _app_spec())
    return st


@pytest.fixture
def events() -> list[tuple[str, str, int | None, TaskState | None]]:
    return []


@pytest.fixture
def watched(
    state: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> ClusterState:
    """``state`` with a listener that records (kind, session id, task id, task state)."""

    def listener(kind: str, session: SessionRecord, task: TaskRecord | None) -> None:
        events.append((kind, session.id, task.id if task else None, task.state if task else None))

    state.subscribe(listener)
    return state


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- applications


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 254,
        "has space",
        "slash/name",
        "colon:name",
        "ünïcode",
        ".hidden",
        "-dash",
        "a..b",
        "..",
        "trailing\n",
        "tab\tname",
    ],
)
def test_register_rejects_bad_names(name: str) -> None:
    st = ClusterState()
    with pytest.raises(InvalidName):
        st.register_application(name, _app_spec())
    assert st.apps == {}


def test_invalid_name_is_an_invalid_argument() -> None:
    # The servicer turns InvalidName into Result{-1}, other InvalidArguments into a status.
    assert issubclass(InvalidName, InvalidArgument)
    assert InvalidName.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize("name", ["a", "a" * 253, "A-b_c.9", "x.y-z", "9lives", "a.b.c"])
def test_register_accepts_good_names(name: str) -> None:
    st = ClusterState()
    app = st.register_application(name, _app_spec())
    assert app.name == name
    assert st.get_application(name) is app


def test_register_duplicate_is_already_exists(state: ClusterState) -> None:
    original = state.get_application(APP)
    with pytest.raises(AlreadyExists) as info:
        state.register_application(APP, _app_spec(command="/bin/false"))
    assert info.value.status == "ALREADY_EXISTS"
    assert state.get_application(APP) is original
    assert original.spec.command == "/bin/true"


def test_register_requires_spec() -> None:
    st = ClusterState()
    with pytest.raises(InvalidArgument):
        st.register_application("ok", None)
    assert "ok" not in st.apps


@pytest.mark.parametrize("part", ["input", "output", "common_data"])
@pytest.mark.parametrize("text", ["{not json", "", "42", '"a string"', "[1, 2]"])
def test_register_rejects_bad_schema(part: str, text: str) -> None:
    spec = _app_spec()
    setattr(spec.schema, part, text)
    st = ClusterState()
    with pytest.raises(InvalidArgument) as info:
        st.register_application("ok", spec)
    assert type(info.value) is InvalidArgument
    assert part in str(info.value)
    assert "ok" not in st.apps


@pytest.mark.parametrize("text", ['{"type": "object"}', "true", "{}"])
def test_register_accepts_valid_schema(text: str) -> None:
    spec = _app_spec()
    spec.schema.input = text
    st = ClusterState()
    app = st.register_application("ok", spec)
    assert app.spec.schema.input == text


def test_register_rejects_relative_working_directory() -> None:
    st = ClusterState()
    with pytest.raises(InvalidArgument) as info:
        st.register_application("ok", _app_spec(working_directory="relative/dir"))
    assert type(info.value) is InvalidArgument
    assert "ok" not in st.apps


def test_register_empty_working_directory_is_unset() -> None:
    st = ClusterState()
    spec = _app_spec(working_directory="")
    assert spec.HasField("working_directory")
    app = st.register_application("ok", spec)
    assert not app.spec.HasField("working_directory")


def test_register_keeps_absolute_working_directory_and_copies_spec() -> None:
    st = ClusterState()
    spec = _app_spec(working_directory="/srv/app")
    app = st.register_application("ok", spec)
    assert app.spec.working_directory == "/srv/app"
    spec.command = "/changed"  # the caller's message is not aliased
    assert app.spec.command == "/bin/true"


def test_application_defaults() -> None:
    st = ClusterState()
    app = st.register_application("ok", _app_spec())
    assert app.max_instances == 1_000_000
    assert app.delay_release == 60
    assert app.enabled
    assert abs(app.creation_time - _now_ms()) < 60_000
    other = st.register_application("other", _app_spec(max_instances=0, delay_release=0))
    assert other.max_instances == 0
    assert other.delay_release == 0


def test_update_application(state: ClusterState) -> None:
    state.update_application(APP, _app_spec(command="/bin/false", working_directory=""))
    app = state.get_application(APP)
    assert app.spec.command == "/bin/false"
    assert not app.spec.HasField("working_directory")
    with pytest.raises(NotFound):
        state.update_application("missing", _app_spec())
    with pytest.raises(InvalidName):
        state.update_application("-bad", _app_spec())
    with pytest.raises(InvalidArgument):
        state.update_application(APP, _app_spec(working_directory="rel"))
    assert state.get_application(APP).spec.command == "/bin/false"


def test_get_unknown_application_is_not_found() -> None:
    with pytest.raises(NotFound) as info:
        ClusterState().get_application("nope")
    assert info.value.status == "NOT_FOUND"


def test_unregister_is_refused_while_the_app_has_open_sessions(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    """A1: refused, nothing dropped; once closed, the app's sessions go with it."""
    watched.register_application("other", _app_spec())
    watched.create_session("s1", _session_spec())
    watched.create_session("s2", _session_spec())
    watched.create_session("keep", _session_spec("other"))
    watched.create_task("s1", b"x")
    with pytest.raises(StateError, match=r"^2 open sessions in the application$") as info:
        watched.unregister_application(APP)
    assert info.value.status == "INTERNAL"
    assert APP in watched.apps and set(watched.sessions) == {"s1", "s2", "keep"}
    watched.close_session("s1")
    watched.close_session("s2")
    events.clear()

    watched.unregister_application(APP)

    assert APP not in watched.apps
    assert set(watched.sessions) == {"keep"}
    assert sorted(e for e in events if e[0] == "removed") == [
        ("removed", "s1", None, None),
        ("removed", "s2", None, None),
    ]
    with pytest.raises(NotFound):
        watched.get_session("s1")


def test_unregister_unknown_application_succeeds() -> None:
    ClusterState().unregister_application("nope")  # A2: no error


# --------------------------------------------------------------------------- sessions


def test_create_session_unknown_app_is_internal(state: ClusterState) -> None:
    with pytest.raises(StateError) as info:
        state.create_session("s", _session_spec("missing"))
    assert info.value.status == "INTERNAL"
    assert "s" not in state.sessions


def test_create_session_disabled_app_is_internal(state: ClusterState) -> None:
    state.get_application(APP).enabled = False
    with pytest.raises(StateError) as info:
        state.create_session("s", _session_spec())
    assert info.value.status == "INTERNAL"


def test_create_session_requires_spec(state: ClusterState) -> None:
    with pytest.raises(InvalidArgument):
        state.create_session("s", None)


def test_create_session_duplicate_id_is_internal(state: ClusterState) -> None:
    first = state.create_session("s", _session_spec(min_instances=2))
    with pytest.raises(StateError) as info:
        state.create_session("s", _session_spec())
    assert info.value.status == "INTERNAL"
    assert state.get_session("s") is first
    assert first.spec.min_instances == 2


def test_create_session_default_resreq_and_batch_size(state: ClusterState) -> None:
    session = state.create_session("s", _session_spec(batch_size=7))
    assert session.spec.HasField("resreq")
    assert (session.spec.resreq.cpu, session.spec.resreq.memory, session.spec.resreq.gpu) == (
        1,
        GIB,
        0,
    )
    assert session.spec.batch_size == 1
    assert session.open
    assert session.completion_time is None
    assert abs(session.creation_time - _now_ms()) < 60_000


def test_create_session_keeps_explicit_resreq(state: ClusterState) -> None:
    resreq = types_pb2.ResourceRequirement(cpu=4, memory=123, gpu=2)
    spec = _session_spec(resreq=resreq, max_instances=3, priority=5)
    session = state.create_session("s", spec)
    assert session.spec.resreq == resreq
    assert session.max_instances == 3
    assert session.spec.priority == 5
    # batch_size is forced on the stored copy, not on the caller's message
    assert not spec.batch_size


def test_explicit_zero_resreq_is_kept(state: ClusterState) -> None:
    session = state.create_session("s", _session_spec(resreq=types_pb2.ResourceRequirement()))
    assert (session.spec.resreq.cpu, session.spec.resreq.memory) == (0, 0)


def test_session_max_instances_unset_means_unlimited(state: ClusterState) -> None:
    assert state.create_session("s", _session_spec()).max_instances is None


def test_create_session_emits_session_event(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    watched.create_session("s", _session_spec())
    assert events == [("session", "s", None, None)]


# --------------------------------------------------------------------------- open_session


def test_open_existing_without_spec_returns_it(state: ClusterState) -> None:
    session = state.create_session("s", _session_spec())
    assert state.open_session("s", None) is session


def test_open_existing_with_matching_spec(state: ClusterState) -> None:
    spec = _session_spec(
        min_instances=1,
        max_instances=2,
        priority=3,
        resreq=types_pb2.ResourceRequirement(cpu=2, memory=GIB, gpu=0),
    )
    session = state.create_session("s", spec)
    assert state.open_session("s", spec) is session


def test_open_default_resreq_matches_explicit_default(state: ClusterState) -> None:
    session = state.create_session("s", _session_spec())
    explicit = _session_spec(resreq=types_pb2.ResourceRequirement(cpu=1, memory=GIB, gpu=0))
    assert state.open_session("s", explicit) is session


def test_open_common_data_is_not_compared(state: ClusterState) -> None:
    session = state.create_session("s", _session_spec(common_data=b"one"))
    assert state.open_session("s", _session_spec(common_data=b"two")) is session
    assert state.open_session("s", _session_spec()) is session
    assert session.spec.common_data == b"one"


def test_open_batch_size_is_not_a_mismatch(state: ClusterState) -> None:
    session = state.create_session("s", _session_spec())
    assert state.open_session("s", _session_spec(batch_size=9)) is session


@pytest.mark.parametrize(
    ("field", "requested"),
    [
        ("application", _session_spec("other")),
        ("min_instances", _session_spec(min_instances=1)),
        ("max_instances", _session_spec(max_instances=5)),
        ("max_instances", _session_spec(max_instances=0)),
        ("priority", _session_spec(priority=1)),
        ("resreq", _session_spec(resreq=types_pb2.ResourceRequirement(cpu=2, memory=GIB))),
        ("resreq", _session_spec(resreq=types_pb2.ResourceRequirement(cpu=1, memory=1))),
        (
            "resreq",
            _session_spec(resreq=types_pb2.ResourceRequirement(cpu=1, memory=GIB, gpu=1)),
        ),
    ],
)
def test_open_spec_mismatch(
    state: ClusterState, field: str, requested: types_pb2.SessionSpec
) -> None:
    state.register_application("other", _app_spec())
    session = state.create_session("s", _session_spec())
    with pytest.raises(InvalidArgument) as info:
        state.open_session("s", requested)
    assert "spec mismatch" in str(info.value)
    assert field in str(info.value)
    # the existing session is untouched
    assert state.get_session("s") is session
    assert session.spec.application == APP


def test_open_closed_session_is_not_open(state: ClusterState) -> None:
    spec = _session_spec()
    state.create_session("s", spec)
    state.close_session("s")
    for given in (None, spec):
        with pytest.raises(InvalidArgument) as info:
            state.open_session("s", given)
        assert type(info.value) is InvalidArgument
        assert "not open" in str(info.value)


def test_open_absent_with_spec_creates(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    session = watched.open_session("new", _session_spec(batch_size=4))
    assert watched.get_session("new") is session
    assert session.spec.batch_size == 1
    assert session.spec.resreq.memory == GIB
    assert events == [("session", "new", None, None)]


def test_open_absent_with_spec_for_unknown_app_is_internal(state: ClusterState) -> None:
    with pytest.raises(StateError) as info:
        state.open_session("new", _session_spec("missing"))
    assert info.value.status == "INTERNAL"


def test_open_absent_without_spec_is_not_found(state: ClusterState) -> None:
    with pytest.raises(NotFound):
        state.open_session("absent", None)
    assert "absent" not in state.sessions


# --------------------------------------------------------------------------- close / delete


def test_close_cancels_pending_tasks(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    watched.create_session("s", _session_spec())
    t1 = watched.create_task("s", b"1")
    t2 = watched.create_task("s", b"2")
    events.clear()

    session = watched.close_session("s")

    assert not session.open
    assert session.completion_time is not None
    assert abs(session.completion_time - _now_ms()) < 60_000
    for task in (t1, t2):
        assert task.state == TaskState.CANCELLED
        assert task.completion_time == session.completion_time
        assert [e.code for e in task.events] == [0]  # no event for Cancelled (T5)
    assert session.counts[TaskState.PENDING] == 0
    assert session.counts[TaskState.CANCELLED] == 2
    assert not session.pending
    assert events == [
        ("task", "s", 1, TaskState.CANCELLED),
        ("task", "s", 2, TaskState.CANCELLED),
        ("session", "s", None, None),
    ]


def test_close_keeps_finished_tasks(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"1")
    state.create_task("s", b"2")
    done = state.take_pending("s")
    assert done is not None
    state.complete_task("s", done.id, 0, b"out", None)
    session = state.close_session("s")
    assert done.state == TaskState.SUCCEED
    assert session.counts[TaskState.SUCCEED] == 1
    assert session.counts[TaskState.CANCELLED] == 1


def test_close_refuses_while_a_task_runs(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"1")
    state.create_task("s", b"2")
    running = state.take_pending("s")
    assert running is not None

    with pytest.raises(StateError) as info:
        state.close_session("s")
    assert info.value.status == "INTERNAL"
    session = state.get_session("s")
    assert session.open
    assert session.completion_time is None
    assert running.state == TaskState.RUNNING
    waiting = session.tasks[2]
    assert waiting.state == TaskState.PENDING  # nothing was cancelled

    state.complete_task("s", running.id, 0, None, None)
    state.close_session("s")
    assert state.get_task("s", "2").state == TaskState.CANCELLED


def test_close_twice_keeps_first_completion_time(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    first = state.close_session("s").completion_time
    assert first is not None
    time.sleep(0.005)
    again = state.close_session("s")
    assert not again.open
    assert again.completion_time == first


def test_close_unknown_session_is_not_found(state: ClusterState) -> None:
    with pytest.raises(NotFound):
        state.close_session("nope")


def test_delete_refuses_with_pending_task(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"1")
    with pytest.raises(StateError):
        state.delete_session("s")
    assert "s" in state.sessions


def test_delete_refuses_with_running_task(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"1")
    state.take_pending("s")
    with pytest.raises(StateError):
        state.delete_session("s")
    assert "s" in state.sessions


def test_delete_removes_a_closed_session_whose_tasks_all_ended(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    watched.create_session("s", _session_spec())
    task = watched.create_task("s", b"1")
    watched.take_pending("s")
    watched.complete_task("s", task.id, 0, b"out", None)
    watched.close_session("s")
    events.clear()
    removed = watched.delete_session("s")
    assert removed.id == "s"
    assert removed.counts[TaskState.SUCCEED] == 1
    assert "s" not in watched.sessions
    assert events == [("removed", "s", None, None)]
    with pytest.raises(NotFound):
        watched.delete_session("s")


def test_delete_refuses_open_sessions_and_cancelled_tasks(state: ClusterState) -> None:
    """S1: only Closed, and Cancelled tasks count as open, so such a session stays."""
    state.create_session("s", _session_spec())
    with pytest.raises(StateError, match="close it") as info:
        state.delete_session("s")
    assert info.value.status == "INTERNAL"
    state.create_task("s", b"x")
    state.close_session("s")
    with pytest.raises(StateError, match="1 pending, running or cancelled"):
        state.delete_session("s")
    assert "s" in state.sessions


# --------------------------------------------------------------------------- tasks


def test_task_ids_increment_from_one_per_session(state: ClusterState) -> None:
    state.create_session("a", _session_spec())
    state.create_session("b", _session_spec())
    ids_a = [state.create_task("a", None).id for _ in range(3)]
    ids_b = [state.create_task("b", None).id for _ in range(2)]
    assert ids_a == [1, 2, 3]
    assert ids_b == [1, 2]


def test_create_task_records_pending(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    watched.create_session("s", _session_spec())
    events.clear()
    task = watched.create_task("s", b"in")
    assert task.state == TaskState.PENDING
    assert task.input == b"in"
    assert task.output is None
    assert task.completion_time is None
    assert [e.code for e in task.events] == [0]
    assert task.events[0].creation_time == task.creation_time
    assert watched.get_session("s").counts[TaskState.PENDING] == 1
    assert events == [("task", "s", 1, TaskState.PENDING)]


def test_create_task_without_input(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    assert state.create_task("s", None).input is None


def test_create_task_on_closed_or_unknown_session_is_internal(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.close_session("s")
    for sid in ("s", "nope"):
        with pytest.raises(StateError) as info:
            state.create_task(sid, b"x")
        assert info.value.status == "INTERNAL"
    assert state.get_session("s").tasks == {}


def test_get_task(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    task = state.create_task("s", b"x")
    assert state.get_task("s", "1") is task


@pytest.mark.parametrize(
    "task_id",
    ["abc", "", "1.5", "0x1", "one", " 1", "1 ", "1_0", "\uff11", str(2**63), str(-(2**63) - 1)],
)
def test_get_task_non_integer_id_is_invalid_argument(state: ClusterState, task_id: str) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"x")
    with pytest.raises(InvalidArgument) as info:
        state.get_task("s", task_id)
    assert "invalid task id" in str(info.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), ("+7", 7), ("007", 7), ("-3", -3), (str(2**63 - 1), 2**63 - 1)],
)
def test_parse_task_id_accepts_int64(text: str, value: int) -> None:
    assert parse_task_id(text) == value


def test_get_task_id_is_checked_before_session(state: ClusterState) -> None:
    with pytest.raises(InvalidArgument):
        state.get_task("nope", "abc")


def test_get_task_unknown_is_not_found(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    with pytest.raises(NotFound):
        state.get_task("s", "1")
    with pytest.raises(NotFound):
        state.get_task("nope", "1")


def test_iter_tasks_snapshot(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"1")
    it = state.iter_tasks("s")
    state.create_task("s", b"2")  # not part of the snapshot
    assert [t.id for t in it] == [1]
    with pytest.raises(NotFound):
        state.iter_tasks("nope")


def test_take_pending_fifo_and_running_event(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    watched.create_session("s", _session_spec())
    for data in (b"1", b"2", b"3"):
        watched.create_task("s", data)
    events.clear()

    taken = [watched.take_pending("s") for _ in range(3)]

    assert [t.input for t in taken if t] == [b"1", b"2", b"3"]
    assert watched.take_pending("s") is None
    session = watched.get_session("s")
    assert session.counts[TaskState.PENDING] == 0
    assert session.counts[TaskState.RUNNING] == 3
    for task in taken:
        assert task is not None
        assert task.state == TaskState.RUNNING
        assert [e.code for e in task.events] == [0, 1]
        assert task.completion_time is None
    assert events == [("task", "s", i, TaskState.RUNNING) for i in (1, 2, 3)]


def test_take_pending_skips_closed_and_unknown(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    assert state.take_pending("s") is None
    assert state.take_pending("nope") is None


def test_complete_task_success(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    watched.create_session("s", _session_spec())
    watched.create_task("s", b"in")
    task = watched.take_pending("s")
    assert task is not None
    events.clear()

    watched.complete_task("s", task.id, 0, b"out", None)

    assert task.state == TaskState.SUCCEED
    assert task.output == b"out"
    assert task.completion_time is not None
    assert task.events[-1].code == 2
    assert task.events[-1].creation_time == task.completion_time
    counts = watched.get_session("s").counts
    assert (counts[TaskState.RUNNING], counts[TaskState.SUCCEED]) == (0, 1)
    assert events == [("task", "s", 1, TaskState.SUCCEED)]


def test_complete_task_failure_keeps_message_and_output(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"in")
    task = state.take_pending("s")
    assert task is not None
    state.complete_task("s", task.id, -1, b"partial", "RuntimeError: boom")
    assert task.state == TaskState.FAILED
    assert task.output == b"partial"
    assert task.completion_time is not None
    assert [e.code for e in task.events] == [0, 1, 3]
    assert task.events[-1].message == "RuntimeError: boom"
    counts = state.get_session("s").counts
    assert (counts[TaskState.RUNNING], counts[TaskState.FAILED]) == (0, 1)


@pytest.mark.parametrize("message", [None, ""])
def test_complete_task_failure_default_message(state: ClusterState, message: str | None) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", None)
    task = state.take_pending("s")
    assert task is not None
    state.complete_task("s", task.id, 7, None, message)
    assert task.state == TaskState.FAILED
    failed = task.events[-1]
    assert failed.code == 3
    assert failed.message
    assert "7" in failed.message


def test_complete_task_ignores_tasks_that_are_not_running(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    task = state.create_task("s", b"x")
    state.complete_task("s", task.id, 0, b"out", None)  # still pending
    assert task.state == TaskState.PENDING
    assert task.output is None
    state.complete_task("s", 99, 0, None, None)
    state.complete_task("nope", 1, 0, None, None)
    assert state.get_session("s").counts[TaskState.SUCCEED] == 0


def test_complete_task_after_session_dropped(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"x")
    task = state.take_pending("s")
    assert task is not None
    state.sessions.pop("s")  # as if it had gone meanwhile
    state.complete_task("s", task.id, 0, b"out", None)  # no error
    assert task.state == TaskState.RUNNING


# --------------------------------------------------------------------------- bind failures


def test_bind_failure_below_limit(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    watched.create_session("s", _session_spec())
    task = watched.create_task("s", b"x")
    events.clear()

    assert watched.record_bind_failure("s", "first") is False
    assert watched.record_bind_failure("s", "second") is False

    session = watched.get_session("s")
    assert [(e.code, e.message) for e in session.events] == [
        (EVENT_BIND_FAILED, "first"),
        (EVENT_BIND_FAILED, "second"),
    ]
    assert EVENT_BIND_FAILED == 1001
    assert not watched.retry_limit_reached("s")
    assert task.state == TaskState.PENDING
    assert events == [("session", "s", None, None)] * 2


def test_bind_failure_at_limit_fails_pending_tasks(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    watched.create_session("s", _session_spec())
    tasks = [watched.create_task("s", data) for data in (b"1", b"2")]
    events.clear()

    results = [watched.record_bind_failure("s", f"error {i}") for i in (1, 2, 3)]

    assert results == [False, False, True]
    assert watched.retry_limit_reached("s")
    session = watched.get_session("s")
    codes = [e.code for e in session.events]
    assert codes == [1001, 1001, 1001, EVENT_RETRY_LIMIT]
    assert EVENT_RETRY_LIMIT == 1002
    for task in tasks:
        assert task.state == TaskState.FAILED
        assert task.completion_time is not None
        message = task.events[-1].message
        assert task.events[-1].code == 3
        assert message is not None
        assert "s" in message.split()  # names the session
        assert "error 3" in message  # the last error
    assert session.counts[TaskState.PENDING] == 0
    assert session.counts[TaskState.FAILED] == 2
    assert not session.pending
    assert ("task", "s", 1, TaskState.FAILED) in events
    assert ("task", "s", 2, TaskState.FAILED) in events
    assert events[-1] == ("session", "s", None, None)


def test_bind_failure_message_names_session(state: ClusterState) -> None:
    state.create_session("my-session-7", _session_spec())
    task = state.create_task("my-session-7", b"x")
    for _ in range(3):
        state.record_bind_failure("my-session-7", "cannot start '/no/such/bin'")
    message = task.events[-1].message or ""
    assert "my-session-7" in message
    assert "cannot start '/no/such/bin'" in message


def test_bind_failure_after_limit_records_1002_once(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    for i in range(5):
        state.record_bind_failure("s", f"e{i}")
    codes = [e.code for e in state.get_session("s").events]
    assert codes.count(1001) == 5
    assert codes.count(1002) == 1
    assert codes.index(1002) == 3  # right after the third (limit) failure


def test_bind_failure_does_not_touch_running_or_finished_tasks(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.create_task("s", b"1")
    state.create_task("s", b"2")
    running = state.take_pending("s")
    assert running is not None
    for _ in range(3):
        state.record_bind_failure("s", "x")
    assert running.state == TaskState.RUNNING
    assert state.get_session("s").tasks[2].state == TaskState.FAILED


def test_bind_failure_unknown_session(state: ClusterState) -> None:
    assert state.record_bind_failure("nope", "x") is True
    assert state.retry_limit_reached("nope")


def test_bind_failure_event_times_are_epoch_ms(state: ClusterState) -> None:
    state.create_session("s", _session_spec())
    state.record_bind_failure("s", "x")
    assert abs(state.get_session("s").events[0].creation_time - _now_ms()) < 60_000


# --------------------------------------------------------------------------- listeners


def test_listeners_see_a_full_lifecycle(
    watched: ClusterState, events: list[tuple[str, str, int | None, TaskState | None]]
) -> None:
    seen_objects: list[tuple[SessionRecord, TaskRecord | None]] = []
    watched.subscribe(lambda kind, session, task: seen_objects.append((session, task)))

    session = watched.create_session("s", _session_spec())
    task = watched.create_task("s", b"x")
    watched.take_pending("s")
    watched.complete_task("s", task.id, 0, b"y", None)
    watched.close_session("s")
    watched.delete_session("s")

    assert events == [
        ("session", "s", None, None),
        ("task", "s", 1, TaskState.PENDING),
        ("task", "s", 1, TaskState.RUNNING),
        ("task", "s", 1, TaskState.SUCCEED),
        ("session", "s", None, None),
        ("removed", "s", None, None),
    ]
    assert all(s is session for s, _ in seen_objects)
    assert [t for _, t in seen_objects if t is not None] == [task] * 3


def test_listener_sees_state_already_applied(state: ClusterState) -> None:
    observed: list[tuple[TaskState, int, int]] = []

    def listener(kind: str, session: SessionRecord, task: TaskRecord | None) -> None:
        if task is not None:
            observed.append(
                (task.state, session.counts[TaskState.PENDING], session.counts[TaskState.RUNNING])
            )

    state.subscribe(listener)
    state.create_session("s", _session_spec())
    state.create_task("s", b"x")
    state.take_pending("s")
    assert observed == [(TaskState.PENDING, 1, 0), (TaskState.RUNNING, 0, 1)]
