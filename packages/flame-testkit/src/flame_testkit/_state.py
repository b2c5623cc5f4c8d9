"""Pure state machines of the local session manager.

No I/O, no asyncio, no gRPC: applications, sessions and tasks with the rules of
flame-wire.md §1 and §5.4 and the real servers' semantics of
flame-server-semantics.md (the row numbers, A1, S1, T5 ..., are quoted where
they apply).  The servicer (``_servicer.py``) speaks the protocol
over this state, and the executor manager (``_executor.py``) drives tasks through
it.  Observers registered with :meth:`ClusterState.subscribe` hear about every
change and are called synchronously, on the caller's thread.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from flame_testkit._task_archive import TaskArchive
from flamepy._types import TaskState
from flamepy.proto import types_pb2

log = logging.getLogger("flame_testkit.state")

DEFAULT_APP_MAX_INSTANCES = 1_000_000
DEFAULT_DELAY_RELEASE = 60
DEFAULT_RESREQ = types_pb2.ResourceRequirement(cpu=1, memory=1024**3, gpu=0)
DEFAULT_RETRY_LIMIT = 5
EVENT_BIND_FAILED = 1001
EVENT_RETRY_LIMIT = 1002
_APP_NAME = re.compile(r"[A-Za-z0-9._-]+")  # used with fullmatch: "$" would allow "\n"
MAX_APP_NAME = 253
_TASK_ID = re.compile(r"[+-]?[0-9]+")
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


TERMINAL = frozenset({TaskState.SUCCEED, TaskState.FAILED, TaskState.CANCELLED})
TASK_PAYLOADS_IN_MEMORY = 1_000
"""Finished tasks per session that stay in memory (at most)..."""
TASK_BYTES_IN_MEMORY = 4 * 1024 * 1024
"""...and at most this many bytes of their inputs and outputs; older ones are
archived (see :mod:`._task_archive`)."""


class StateError(Exception):
    """A rule was broken; ``status`` names the gRPC code the servicer answers with."""

    status = "INTERNAL"


class NotFound(StateError):
    status = "NOT_FOUND"


class AlreadyExists(StateError):
    status = "ALREADY_EXISTS"


class InvalidArgument(StateError):
    status = "INVALID_ARGUMENT"


class InvalidName(InvalidArgument):
    """A bad application name; RegisterApplication reports it in ``Result``."""


def now_ms() -> int:
    """The time as the real server stores it: whole seconds times 1000 (S7)."""
    return int(time.time()) * 1000


STATE_NAMES = {
    TaskState.PENDING: "Pending",
    TaskState.RUNNING: "Running",
    TaskState.SUCCEED: "Succeed",
    TaskState.FAILED: "Failed",
    TaskState.CANCELLED: "Cancelled",
}


def task_event_text(state: TaskState, created: bool = False) -> str:
    """The real server's task event texts (T5)."""
    name = STATE_NAMES[state]
    if created:
        return f"Task was created with state <{name}>"
    if state in TERMINAL:
        return f"Task was completed with state <{name}>"
    return f"Task state was updated to <{name}>"


@dataclass
class EventRecord:
    code: int
    message: str | None
    creation_time: int


@dataclass
class AppRecord:
    name: str
    spec: types_pb2.ApplicationSpec
    creation_time: int
    enabled: bool = True
    lease: str | None = None
    """The identity of the client process that owns it (``flamepy._owner``)."""

    @property
    def max_instances(self) -> int:
        return (
            self.spec.max_instances
            if self.spec.HasField("max_instances")
            else DEFAULT_APP_MAX_INSTANCES
        )

    @property
    def delay_release(self) -> int:
        return (
            self.spec.delay_release
            if self.spec.HasField("delay_release")
            else DEFAULT_DELAY_RELEASE
        )


@dataclass
class TaskRecord:
    id: int
    session_id: str
    input: bytes | None
    creation_time: int
    state: TaskState = TaskState.PENDING
    output: bytes | None = None
    completion_time: int | None = None
    events: list[EventRecord] = field(default_factory=list)
    started: float | None = None
    """When it went Running, to the microsecond (the wire's times are whole seconds,
    S7): the dashboard's durations."""
    ended: float | None = None


@dataclass
class SessionRecord:
    id: str
    spec: types_pb2.SessionSpec
    creation_time: int
    open: bool = True
    completion_time: int | None = None
    tasks: dict[int, TaskRecord] = field(default_factory=dict)
    pending: deque[int] = field(default_factory=deque)
    counts: dict[TaskState, int] = field(default_factory=lambda: dict.fromkeys(TaskState, 0))
    events: list[EventRecord] = field(default_factory=list)
    bind_failures: int = 0
    unschedulable: str | None = None
    """Set at the bind retry limit: why no instance can run this session's tasks."""
    next_task_id: int = 1
    lease: str | None = None
    """The identity of the client process that owns it (``flamepy._owner``)."""
    finished: deque[int] = field(default_factory=deque)
    """Finished tasks still in memory, oldest first; older ones are archived."""
    finished_bytes: int = 0
    """The payload bytes of ``finished``."""

    @property
    def max_instances(self) -> int | None:
        return self.spec.max_instances if self.spec.HasField("max_instances") else None


Listener = Callable[[str, SessionRecord, "TaskRecord | None"], None]
"""Called as ``listener(kind, session, task)``; kind is one of ``session``,
``task``, ``removed``."""


def validate_app_name(name: str) -> None:
    if not name or len(name) > MAX_APP_NAME:
        raise InvalidName(f"invalid application name {name!r}: must be 1 to 253 characters")
    if not _APP_NAME.fullmatch(name) or name[0] in ".-" or ".." in name:
        raise InvalidName(
            f"invalid application name {name!r}: use [A-Za-z0-9._-], do not start with "
            "'.' or '-', and do not use '..'"
        )


def parse_task_id(task_id: str) -> int:
    """Parse a wire task id as the real server does (an int64, Rust ``i64::from_str``).

    Stricter than ``int()``: no whitespace, underscores or non-ASCII digits, and the
    value must fit in an int64.
    """
    if _TASK_ID.fullmatch(task_id):
        value = int(task_id)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    raise InvalidArgument(f"invalid task id {task_id!r}")


def validate_app_spec(spec: types_pb2.ApplicationSpec | None) -> types_pb2.ApplicationSpec:
    if spec is None:
        raise InvalidArgument("application spec is required")
    for part in ("input", "output", "common_data"):
        if spec.HasField("schema") and spec.schema.HasField(part):
            text = getattr(spec.schema, part)
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise InvalidArgument(f"schema.{part} is not valid JSON: {exc}") from exc
            if not isinstance(doc, (dict, bool)):
                raise InvalidArgument(f"schema.{part} is not a JSON Schema object")
    copy = types_pb2.ApplicationSpec()
    copy.CopyFrom(spec)
    if copy.HasField("working_directory"):
        if copy.working_directory == "":
            copy.ClearField("working_directory")
        elif not copy.working_directory.startswith("/"):
            raise InvalidArgument(
                f"working_directory {copy.working_directory!r} must be an absolute path"
            )
    return copy


class ClusterState:
    """Applications, sessions and tasks of one local session manager."""

    def __init__(
        self,
        retry_limit: int = DEFAULT_RETRY_LIMIT,
        archive: TaskArchive | None = None,
        kept_in_memory: int = TASK_PAYLOADS_IN_MEMORY,
    ) -> None:
        """``archive``: where the payloads of finished tasks beyond the newest
        ``kept_in_memory`` of each session go (None: they all stay in memory)."""
        self.retry_limit = retry_limit
        self.archive = archive
        self.kept_in_memory = kept_in_memory
        self.apps: dict[str, AppRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.by_app: dict[str, dict[str, SessionRecord]] = {}
        """The sessions of each application."""
        self.leases: dict[str, tuple[set[str], set[str]]] = {}
        """Per owner identity: the sessions and applications it created."""
        self.wanting: dict[str, SessionRecord] = {}
        """Open, schedulable sessions with tasks waiting or a ``min_instances``: all
        that a scheduling pass looks at, so its cost follows them, not every session
        ever created."""
        self._listeners: list[Listener] = []

    # -- observers ------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, kind: str, session: SessionRecord, task: TaskRecord | None = None) -> None:
        wants = (
            kind != "removed"
            and session.open
            and session.unschedulable is None
            and (bool(session.pending) or session.spec.min_instances > 0)
        )
        if wants:
            self.wanting[session.id] = session
        else:
            self.wanting.pop(session.id, None)
        for listener in self._listeners:
            listener(kind, session, task)

    # -- applications -----------------------------------------------------------------

    def register_application(
        self, name: str, spec: types_pb2.ApplicationSpec | None, lease: str | None = None
    ) -> AppRecord:
        validate_app_name(name)
        checked = _as_stored(validate_app_spec(spec))
        if name in self.apps:
            raise AlreadyExists(f"application {name} already exists")
        app = AppRecord(name=name, spec=checked, creation_time=now_ms(), lease=lease)
        self.apps[name] = app
        if lease is not None:
            self.leases.setdefault(lease, (set(), set()))[1].add(name)
        return app

    def open_sessions_of(self, name: str) -> int:
        return sum(1 for s in self.by_app.get(name, {}).values() if s.open)

    def _refuse_with_open_sessions(self, name: str) -> None:
        """A1, A3: the real server refuses while the application has open sessions."""
        count = self.open_sessions_of(name)
        if count:
            raise StateError(f"{count} open sessions in the application")

    def update_application(self, name: str, spec: types_pb2.ApplicationSpec | None) -> AppRecord:
        validate_app_name(name)
        checked = _as_stored(validate_app_spec(spec))
        app = self.get_application(name)
        self._refuse_with_open_sessions(name)
        app.spec = checked
        return app

    def unregister_application(self, name: str) -> None:
        """A1: refused while the application has open sessions; A2: an unknown name
        succeeds.  Its closed sessions go with it."""
        if name not in self.apps:
            return
        self._refuse_with_open_sessions(name)
        del self.apps[name]
        for session in self.by_app.pop(name, {}).values():
            del self.sessions[session.id]
            if self.archive is not None:
                self.archive.drop(session.id)
            self._emit("removed", session)

    def get_application(self, name: str) -> AppRecord:
        try:
            return self.apps[name]
        except KeyError:
            raise NotFound(f"application {name} not found") from None

    # -- sessions -------------------------------------------------------------------

    def _resolved_spec(self, spec: types_pb2.SessionSpec) -> types_pb2.SessionSpec:
        copy = types_pb2.SessionSpec()
        copy.CopyFrom(spec)
        if not copy.HasField("resreq"):
            copy.resreq.CopyFrom(DEFAULT_RESREQ)
        copy.batch_size = 1
        return copy

    def create_session(
        self, session_id: str, spec: types_pb2.SessionSpec | None, lease: str | None = None
    ) -> SessionRecord:
        if spec is None:
            raise InvalidArgument("session spec is required")
        if not session_id:
            raise InvalidArgument("session id must not be empty")
        app = self.apps.get(spec.application)
        if app is None:
            raise StateError(f"application {spec.application} not found")
        if not app.enabled:
            raise StateError(f"application {spec.application} is disabled")
        if session_id in self.sessions:
            raise StateError(f"session {session_id} already exists")
        session = SessionRecord(
            id=session_id, spec=self._resolved_spec(spec), creation_time=now_ms(), lease=lease
        )
        self.sessions[session_id] = session
        if lease is not None:
            self.leases.setdefault(lease, (set(), set()))[0].add(session_id)
        self.by_app.setdefault(spec.application, {})[session_id] = session
        self._emit("session", session)
        return session

    def open_session(
        self, session_id: str, spec: types_pb2.SessionSpec | None, lease: str | None = None
    ) -> SessionRecord:
        session = self.sessions.get(session_id)
        if session is None:
            if spec is None:
                raise NotFound(f"session {session_id} not found and no spec was given to create it")
            return self.create_session(session_id, spec, lease)
        if not session.open:
            raise InvalidArgument(f"session {session_id} is not open")
        if spec is not None:
            wanted = self._resolved_spec(spec)
            mismatches = [
                name
                for name in ("application", "min_instances", "max_instances", "priority", "resreq")
                if _field(wanted, name) != _field(session.spec, name)
            ]
            if mismatches:
                detail = ", ".join(
                    f"{n}: existing {_field(session.spec, n)!r} != requested {_field(wanted, n)!r}"
                    for n in mismatches
                )
                raise InvalidArgument(f"session {session_id} spec mismatch ({detail})")
        return session

    def get_session(self, session_id: str) -> SessionRecord:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise NotFound(f"session {session_id} not found") from None

    def close_session(self, session_id: str) -> SessionRecord:
        session = self.get_session(session_id)
        if session.counts[TaskState.RUNNING]:
            raise StateError(
                f"session {session_id} has {session.counts[TaskState.RUNNING]} running task(s); "
                "wait for them before closing"
            )
        now = now_ms()
        while session.pending:
            task = session.tasks[session.pending.popleft()]
            self._transition(session, task, TaskState.CANCELLED, now, "session closed")
        if session.open:
            session.open = False
            session.completion_time = now
        self._emit("session", session)
        return session

    def delete_session(self, session_id: str) -> SessionRecord:
        """S1: only a Closed session whose tasks all Succeeded or Failed; Cancelled
        tasks count as open, so a session closed with pending tasks stays forever.
        Refusals are INTERNAL, as the real server's storage errors are."""
        session = self.get_session(session_id)
        if session.open:
            raise StateError(f"session {session_id} is open; close it before deleting it")
        active = sum(
            session.counts[s] for s in (TaskState.PENDING, TaskState.RUNNING, TaskState.CANCELLED)
        )
        if active:
            raise StateError(
                f"session {session_id} still has {active} pending, running or cancelled task(s)"
            )
        del self.sessions[session_id]
        self.by_app.get(session.spec.application, {}).pop(session_id, None)
        if self.archive is not None:
            self.archive.drop(session_id)
        session.open = False
        self._emit("removed", session)
        return session

    # -- tasks ----------------------------------------------------------------------

    def create_task(self, session_id: str, data: bytes | None) -> TaskRecord:
        session = self.sessions.get(session_id)
        if session is None:
            raise StateError(f"session {session_id} not found")
        if not session.open:
            raise StateError(f"session {session_id} is closed; open a new session for new tasks")
        task = TaskRecord(
            id=session.next_task_id, session_id=session_id, input=data, creation_time=now_ms()
        )
        session.next_task_id += 1
        session.tasks[task.id] = task
        session.counts[TaskState.PENDING] += 1
        task.events.append(
            EventRecord(
                TaskState.PENDING, task_event_text(TaskState.PENDING, True), task.creation_time
            )
        )
        if session.unschedulable is not None:
            # Past the bind retry limit nothing will ever run it: fail it now.
            self._transition(session, task, TaskState.FAILED, now_ms(), session.unschedulable)
            return task
        session.pending.append(task.id)
        self._emit("task", session, task)
        return task

    def get_task(self, session_id: str, task_id: str) -> TaskRecord:
        tid = parse_task_id(task_id)
        session = self.get_session(session_id)
        found = self.task(session, tid)
        if found is None:
            raise NotFound(f"task {session_id}/{task_id} not found")
        return found

    def iter_tasks(self, session_id: str) -> Iterator[TaskRecord]:
        session = self.get_session(session_id)
        in_memory = list(session.tasks.values())
        if len(in_memory) == session.next_task_id - 1:
            return iter(in_memory)
        return self._all_tasks(session, session.next_task_id)

    def _all_tasks(self, session: SessionRecord, end: int) -> Iterator[TaskRecord]:
        for task_id in range(1, end):
            found = self.task(session, task_id)
            if found is not None:
                yield found

    def _transition(
        self,
        session: SessionRecord,
        task: TaskRecord,
        state: TaskState,
        when: int,
        message: str | None = None,
    ) -> None:
        session.counts[task.state] -= 1
        session.counts[state] += 1
        task.state = state
        if state != TaskState.CANCELLED:  # T5: no event for tasks cancelled at close
            task.events.append(EventRecord(int(state), message or task_event_text(state), when))
        if state in TERMINAL:
            task.completion_time = when
            if self.archive is not None:
                session.finished.append(task.id)
                session.finished_bytes += _size(task)
                while len(session.finished) > 1 and (
                    len(session.finished) > self.kept_in_memory
                    or session.finished_bytes > TASK_BYTES_IN_MEMORY
                ):
                    oldest = session.tasks[session.finished.popleft()]
                    session.finished_bytes -= _size(oldest)
                    self._archive(session, oldest)
        self._emit("task", session, task)

    def _archive(self, session: SessionRecord, task: TaskRecord) -> None:
        if self.archive is None:
            return
        try:
            self.archive.put(session.id, task.id, task)
        except OSError as exc:  # a full disk: it stays in memory, nothing is lost
            log.warning("cannot archive task %s/%s: %s", session.id, task.id, exc)
            return
        del session.tasks[task.id]

    def task(self, session: SessionRecord, task_id: int) -> TaskRecord | None:
        """A task of ``session``, from memory or from the archive."""
        found = session.tasks.get(task_id)
        if found is not None or self.archive is None or not 0 < task_id < session.next_task_id:
            return found
        record: TaskRecord | None = self.archive.get(session.id, task_id)
        return record

    # -- executor-manager side ------------------------------------------------------

    def take_pending(self, session_id: str) -> TaskRecord | None:
        """Move the oldest pending task of an open session to Running."""
        session = self.sessions.get(session_id)
        if session is None or not session.open or not session.pending:
            return None
        task = session.tasks[session.pending.popleft()]
        task.started = time.time()
        self._transition(session, task, TaskState.RUNNING, now_ms())
        return task

    def complete_task(
        self,
        session_id: str,
        task_id: int,
        return_code: int,
        output: bytes | None,
        message: str | None,
    ) -> None:
        session = self.sessions.get(session_id)
        task = session.tasks.get(task_id) if session else None
        if session is None or task is None or task.state != TaskState.RUNNING:
            return  # the session was dropped (application unregistered) meanwhile
        task.output = output
        task.ended = time.time()
        state = TaskState.SUCCEED if return_code == 0 else TaskState.FAILED
        if state == TaskState.FAILED and not message:
            message = f"task failed with return code {return_code}"
        self._transition(session, task, state, now_ms(), message)

    def record_bind_failure(self, session_id: str, message: str) -> bool:
        """Record event 1001; at the retry limit record 1002 and fail pending tasks.

        Returns True when the session has reached its retry limit.  Failing the
        pending tasks improves on the real cluster, which leaves them Pending.
        """
        session = self.sessions.get(session_id)
        if session is None:
            return True
        now = now_ms()
        session.bind_failures += 1
        session.events.append(EventRecord(EVENT_BIND_FAILED, message, now))
        if session.bind_failures < self.retry_limit:
            self._emit("session", session)
            return False
        if session.bind_failures == self.retry_limit:
            session.events.append(
                EventRecord(
                    EVENT_RETRY_LIMIT,
                    f"bind retry limit ({self.retry_limit}) reached: {message}",
                    now,
                )
            )
        reason = (
            f"no instance could be started for session {session_id} after "
            f"{session.bind_failures} attempts; last error: {message}"
        )
        self.mark_unschedulable(session_id, reason)
        return True

    def mark_unschedulable(self, session_id: str, reason: str) -> None:
        """No instance will ever run this session's tasks: fail those waiting and
        those created later with ``reason``."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        now = now_ms()
        session.unschedulable = reason
        while session.pending:
            task = session.tasks[session.pending.popleft()]
            self._transition(session, task, TaskState.FAILED, now, reason)
        self._emit("session", session)

    # -- leases ----------------------------------------------------------------------

    def reap(self, lease: str, reason: str) -> tuple[list[str], list[str]]:
        """The client ``lease`` names is gone: close its sessions (pending tasks
        Cancelled, running ones Failed with ``reason``) and remove its applications
        that have no other open session.  Returns (sessions closed, apps removed)."""
        sessions, apps = self.leases.pop(lease, (set(), set()))
        closed = []
        now = now_ms()
        for sid in sorted(sessions):
            session = self.sessions.get(sid)
            if session is None or not session.open:
                continue
            while session.pending:
                task = session.tasks[session.pending.popleft()]
                self._transition(session, task, TaskState.CANCELLED, now, reason)
            for task in list(session.tasks.values()):
                if task.state == TaskState.RUNNING:
                    self._transition(session, task, TaskState.FAILED, now, reason)
            session.open = False
            session.completion_time = now
            self._emit("session", session)
            closed.append(sid)
        removed = []
        for name in sorted(apps):
            if name in self.apps and not self.open_sessions_of(name):
                self.unregister_application(name)
                removed.append(name)
        return closed, removed

    def retry_limit_reached(self, session_id: str) -> bool:
        session = self.sessions.get(session_id)
        return session is None or session.bind_failures >= self.retry_limit


def _size(task: TaskRecord) -> int:
    return len(task.input or b"") + len(task.output or b"")


def _as_stored(spec: types_pb2.ApplicationSpec) -> types_pb2.ApplicationSpec:
    """A4: the real server stores neither ``image`` nor ``shim`` (Host, 0, is read back)."""
    spec.ClearField("image")
    spec.shim = types_pb2.Host
    return spec


def _field(spec: types_pb2.SessionSpec, name: str) -> object:
    if name in ("max_instances", "resreq") and not spec.HasField(name):
        return None
    value = getattr(spec, name)
    if name == "resreq":
        return (value.cpu, value.memory, value.gpu)
    return value
