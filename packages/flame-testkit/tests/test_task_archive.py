"""Finished tasks leave memory but stay readable (issue 20, the soak): a session
keeps the newest ``kept_in_memory`` in memory, the rest on disk."""

from __future__ import annotations

from pathlib import Path

from flame_testkit._state import ClusterState
from flame_testkit._task_archive import TaskArchive
from flamepy._types import TaskState
from flamepy.proto import types_pb2


def _state(tmp_path: Path) -> ClusterState:
    state = ClusterState(archive=TaskArchive(tmp_path / "tasks"), kept_in_memory=2)
    spec = types_pb2.ApplicationSpec(command="/bin/true")
    state.register_application("app", spec)
    state.create_session("s", types_pb2.SessionSpec(application="app"))
    return state


def _run(state: ClusterState, data: bytes | None, output: bytes | None, code: int = 0) -> int:
    task = state.create_task("s", data)
    taken = state.take_pending("s")
    assert taken is task
    state.complete_task("s", task.id, code, output, None if code == 0 else "failed")
    return task.id


def test_old_tasks_go_to_disk_and_read_back_exactly(tmp_path: Path) -> None:
    state = _state(tmp_path)
    cases = [(b"in-1", b"out-1"), (None, b""), (b"", None), (b"x" * 100_000, b"y" * 7)]
    ids = [_run(state, data, output) for data, output in cases]
    _run(state, b"z", None, code=1)
    session = state.sessions["s"]
    assert sorted(session.tasks) == [4, 5]  # the newest two stay in memory
    for task_id, (data, output) in zip(ids, cases, strict=True):
        task = state.get_task("s", str(task_id))
        assert (task.id, task.input, task.output) == (task_id, data, output)
        assert task.state == TaskState.SUCCEED and task.completion_time is not None
        assert [e.message for e in task.events][-1] == "Task was completed with state <Succeed>"
    listed = list(state.iter_tasks("s"))
    assert [t.id for t in listed] == [1, 2, 3, 4, 5]
    assert listed[-1].state == TaskState.FAILED
    assert state.task(session, 6) is None


def test_removing_the_session_removes_its_file(tmp_path: Path) -> None:
    state = _state(tmp_path)
    for i in range(5):
        _run(state, f"in-{i}".encode(), f"out-{i}".encode())
    files = list((tmp_path / "tasks").iterdir())
    assert len(files) == 2  # data and index
    state.close_session("s")
    state.delete_session("s")
    assert list((tmp_path / "tasks").iterdir()) == []


def test_a_failing_archive_keeps_the_payload_in_memory(tmp_path: Path) -> None:
    state = _state(tmp_path)
    (tmp_path / "tasks").rmdir()
    (tmp_path / "tasks").write_text("not a directory")  # every archive write fails
    ids = [_run(state, b"in", f"out-{i}".encode()) for i in range(4)]
    tasks = state.sessions["s"].tasks
    assert sorted(tasks) == ids  # all kept in memory
    assert [tasks[i].output for i in ids] == [b"out-0", b"out-1", b"out-2", b"out-3"]
