"""The Frontend gRPC servicer: flame.v1 wire behaviour over :mod:`._state`.

Status codes and Result conventions follow flame-wire.md §0 and §1.  WatchTask
streams are woken by state-change notifications, never by polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio

from flame_testkit._state import (
    DEFAULT_APP_MAX_INSTANCES,
    DEFAULT_DELAY_RELEASE,
    TERMINAL,
    AlreadyExists,
    AppRecord,
    ClusterState,
    EventRecord,
    InvalidName,
    SessionRecord,
    StateError,
    TaskRecord,
    parse_task_id,
)
from flamepy._owner import LEASE_METADATA
from flamepy._types import TaskState
from flamepy.proto import frontend_pb2 as fe
from flamepy.proto import frontend_pb2_grpc, types_pb2

log = logging.getLogger("flame_testkit.frontend")


@dataclass(frozen=True)
class FrontendOptions:
    """Knobs that let tests choose between real-server fidelity and convenience."""

    watch_events: bool = False
    """Send task events on WatchTask.  The real server usually sends none."""


def _events(target: Any, events: list[EventRecord]) -> None:
    for e in events:
        event = target.add(code=e.code, creation_time=e.creation_time)
        if e.message is not None:
            event.message = e.message


def task_to_proto(task: TaskRecord, with_events: bool) -> types_pb2.Task:
    msg = types_pb2.Task()
    msg.metadata.id = msg.metadata.name = str(task.id)
    msg.spec.session_id = task.session_id
    if task.input is not None:
        msg.spec.input = task.input
    if task.output is not None:
        msg.spec.output = task.output
    msg.status.state = int(task.state)  # type: ignore[assignment]
    msg.status.creation_time = task.creation_time
    if task.completion_time is not None:
        msg.status.completion_time = task.completion_time
    if with_events:
        _events(msg.status.events, task.events)
    return msg


def session_to_proto(session: SessionRecord) -> types_pb2.Session:
    msg = types_pb2.Session()
    msg.metadata.id = msg.metadata.name = session.id
    msg.spec.CopyFrom(session.spec)
    status = msg.status
    status.state = types_pb2.Open if session.open else types_pb2.Closed
    status.creation_time = session.creation_time
    if session.completion_time is not None:
        status.completion_time = session.completion_time
    status.pending = session.counts[TaskState.PENDING]
    status.running = session.counts[TaskState.RUNNING]
    status.succeed = session.counts[TaskState.SUCCEED]
    status.failed = session.counts[TaskState.FAILED]
    status.cancelled = session.counts[TaskState.CANCELLED]
    _events(status.events, session.events)
    return msg


def application_to_proto(app: AppRecord) -> types_pb2.Application:
    msg = types_pb2.Application()
    msg.metadata.id = msg.metadata.name = app.name
    msg.spec.CopyFrom(app.spec)
    if not msg.spec.HasField("max_instances"):
        msg.spec.max_instances = DEFAULT_APP_MAX_INSTANCES
    if not msg.spec.HasField("delay_release"):
        msg.spec.delay_release = DEFAULT_DELAY_RELEASE
    msg.status.state = types_pb2.Enabled if app.enabled else types_pb2.Disabled
    msg.status.creation_time = app.creation_time
    return msg


LOCAL_PEERS = ("unix:", "ipv4:127.", "ipv6:[::1]")
"""Peers on this host: only their leases name a process this cluster can see."""


def _lease(context: Any) -> str | None:
    """The owner identity a local client sent (``x-flame-lease``), if any."""
    try:
        metadata = context.invocation_metadata() or ()
        peer = context.peer() or ""
    except (AttributeError, TypeError):  # the in-process transport: nothing to reap
        return None
    if not peer.startswith(LOCAL_PEERS):
        return None
    for key, value in metadata:
        if key == LEASE_METADATA and isinstance(value, str) and len(value) <= 64:
            return value
    return None


async def _abort(context: grpc.aio.ServicerContext, err: StateError) -> NoReturn:
    await context.abort(getattr(grpc.StatusCode, err.status), str(err))
    raise AssertionError("unreachable")  # pragma: no cover


class FrontendServicer(frontend_pb2_grpc.FrontendServicer):
    """Serves ``flame.v1.Frontend`` from a :class:`ClusterState`."""

    def __init__(
        self,
        state: ClusterState,
        *,
        options: FrontendOptions | None = None,
        executors: Callable[[], list[types_pb2.Executor]] = list,
        nodes: Callable[[], list[types_pb2.Node]] = list,
    ) -> None:
        self.state = state
        self.options = options or FrontendOptions()
        self._executors = executors
        self._nodes = nodes
        self._waiters: dict[tuple[str, int], set[asyncio.Event]] = defaultdict(set)
        state.subscribe(self._on_change)

    # -- change notification --------------------------------------------------------

    def _on_change(self, kind: str, session: SessionRecord, task: TaskRecord | None) -> None:
        if task is not None:
            keys = [(session.id, task.id)]
        elif kind == "removed":
            keys = [k for k in self._waiters if k[0] == session.id]
        else:
            return
        for key in keys:
            for event in self._waiters.get(key, ()):
                event.set()

    async def _wait_change(self, key: tuple[str, int]) -> None:
        event = asyncio.Event()
        self._waiters[key].add(event)
        try:
            await event.wait()
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]

    # -- applications -----------------------------------------------------------------

    async def RegisterApplication(
        self, request: fe.RegisterApplicationRequest, context: Any
    ) -> types_pb2.Result:
        spec = request.application if request.HasField("application") else None
        try:
            self.state.register_application(request.name, spec, _lease(context))
        except (InvalidName, AlreadyExists) as err:
            return types_pb2.Result(return_code=-1, message=str(err))
        except StateError as err:
            await _abort(context, err)
        return types_pb2.Result(return_code=0)

    async def UpdateApplication(
        self, request: fe.UpdateApplicationRequest, context: Any
    ) -> types_pb2.Result:
        spec = request.application if request.HasField("application") else None
        try:
            self.state.update_application(request.name, spec)
        except InvalidName as err:
            return types_pb2.Result(return_code=-1, message=str(err))
        except StateError as err:
            if err.status == "INVALID_ARGUMENT":
                await _abort(context, err)
            return types_pb2.Result(return_code=-1, message=str(err))
        return types_pb2.Result(return_code=0)

    async def UnregisterApplication(
        self, request: fe.UnregisterApplicationRequest, context: Any
    ) -> types_pb2.Result:
        try:
            self.state.unregister_application(request.name)
        except StateError as err:
            return types_pb2.Result(return_code=-1, message=str(err))
        return types_pb2.Result(return_code=0)

    async def GetApplication(
        self, request: fe.GetApplicationRequest, context: Any
    ) -> types_pb2.Application:
        try:
            return application_to_proto(self.state.get_application(request.name))
        except StateError as err:
            await _abort(context, err)

    async def ListApplication(
        self, request: fe.ListApplicationRequest, context: Any
    ) -> types_pb2.ApplicationList:
        return types_pb2.ApplicationList(
            applications=[application_to_proto(a) for a in self.state.apps.values()]
        )

    async def ListExecutor(
        self, request: fe.ListExecutorRequest, context: Any
    ) -> types_pb2.ExecutorList:
        return types_pb2.ExecutorList(executors=self._executors())

    async def ListNodes(self, request: fe.ListNodesRequest, context: Any) -> types_pb2.NodeList:
        return types_pb2.NodeList(nodes=self._nodes())

    async def GetNode(self, request: fe.GetNodeRequest, context: Any) -> fe.GetNodeResponse:
        for node in self._nodes():
            if node.metadata.name == request.name:
                return fe.GetNodeResponse(node=node)
        await _abort(context, _not_found(f"node {request.name} not found"))

    # -- sessions -------------------------------------------------------------------

    async def CreateSession(
        self, request: fe.CreateSessionRequest, context: Any
    ) -> types_pb2.Session:
        spec = request.session if request.HasField("session") else None
        try:
            session = self.state.create_session(request.session_id, spec, _lease(context))
            return session_to_proto(session)
        except StateError as err:
            await _abort(context, err)

    async def OpenSession(self, request: fe.OpenSessionRequest, context: Any) -> types_pb2.Session:
        spec = request.session if request.HasField("session") else None
        try:
            session = self.state.open_session(request.session_id, spec, _lease(context))
            return session_to_proto(session)
        except StateError as err:
            await _abort(context, err)

    async def CloseSession(
        self, request: fe.CloseSessionRequest, context: Any
    ) -> types_pb2.Session:
        try:
            return session_to_proto(self.state.close_session(request.session_id))
        except StateError as err:
            await _abort(context, err)

    async def DeleteSession(
        self, request: fe.DeleteSessionRequest, context: Any
    ) -> types_pb2.Session:
        try:
            return session_to_proto(self.state.delete_session(request.session_id))
        except StateError as err:
            await _abort(context, err)

    async def GetSession(self, request: fe.GetSessionRequest, context: Any) -> types_pb2.Session:
        try:
            return session_to_proto(self.state.get_session(request.session_id))
        except StateError as err:
            await _abort(context, err)

    async def ListSession(
        self, request: fe.ListSessionRequest, context: Any
    ) -> types_pb2.SessionList:
        return types_pb2.SessionList(
            sessions=[session_to_proto(s) for s in self.state.sessions.values()]
        )

    # -- tasks ----------------------------------------------------------------------

    async def CreateTask(self, request: fe.CreateTaskRequest, context: Any) -> types_pb2.Task:
        data = request.task.input if request.task.HasField("input") else None
        try:
            task = self.state.create_task(request.task.session_id, data)
        except StateError as err:
            await _abort(context, err)
        return task_to_proto(task, with_events=True)

    async def GetTask(self, request: fe.GetTaskRequest, context: Any) -> types_pb2.Task:
        try:
            task = self.state.get_task(request.session_id, request.task_id)
            return task_to_proto(task, with_events=True)
        except StateError as err:
            await _abort(context, err)

    async def WatchTask(
        self, request: fe.WatchTaskRequest, context: Any
    ) -> AsyncIterator[types_pb2.Task]:
        try:
            task_id = parse_task_id(request.task_id)
        except StateError as err:
            await _abort(context, err)
        key = (request.session_id, task_id)
        # T1: a message only when the state changes, or at once when it is terminal;
        # the current non-terminal state is not sent first.
        session = self.state.sessions.get(request.session_id)
        first = self.state.task(session, task_id) if session is not None else None
        sent: TaskState | None = None
        if first is not None and first.state not in TERMINAL:
            sent = first.state
        while True:
            session = self.state.sessions.get(request.session_id)
            task = self.state.task(session, task_id) if session is not None else None
            if task is None:
                return  # the real server closes the stream with OK and no message
            if task.state != sent:
                sent = task.state
                yield task_to_proto(task, with_events=self.options.watch_events)
                if sent in TERMINAL:
                    return
                continue  # the state may have moved on while we yielded
            await self._wait_change(key)

    async def ListTask(
        self, request: fe.ListTaskRequest, context: Any
    ) -> AsyncIterator[types_pb2.Task]:
        try:
            tasks = list(self.state.iter_tasks(request.session_id))
        except StateError as err:
            await _abort(context, err)
        for task in tasks:
            yield task_to_proto(task, with_events=False)


def _not_found(message: str) -> StateError:
    from flame_testkit._state import NotFound

    return NotFound(message)
