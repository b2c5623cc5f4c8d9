"""The asyncio core of the Frontend client (grpc.aio).

Everything else in flamepy (the sync facade, the Runner) is built on
:class:`AsyncConnection` and :class:`AsyncSession`.  gRPC errors become
:mod:`flamepy._errors` exceptions here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import grpc
import grpc.aio

from flamepy._channel import open_channel, wait_ready
from flamepy._config import DEFAULT_CONNECT_TIMEOUT
from flamepy._convert import (
    application_attributes,
    application_from_proto,
    application_spec_to_proto,
    events_from_proto,
    executor_from_proto,
    ms_to_datetime,
    node_from_proto,
    resreq_to_proto,
    task_from_proto,
    task_state,
)
from flamepy._errors import (
    FlameTimeoutError,
    InvalidArgumentError,
    NotFoundError,
    TaskCancelledError,
    TaskFailedError,
    from_result,
    from_rpc_error,
)
from flamepy._inproc import InProcessStub, lookup
from flamepy._owner import LEASE_METADATA
from flamepy._types import (
    Application,
    ApplicationAttributes,
    Event,
    Executor,
    Node,
    ResourceRequirement,
    SessionAttributes,
    SessionState,
    Task,
    TaskState,
)
from flamepy.proto import frontend_pb2 as fe
from flamepy.proto import frontend_pb2_grpc, types_pb2

log = logging.getLogger("flamepy.client")
T = TypeVar("T")

MAX_UNARY_IN_FLIGHT = 256
"""Unary Frontend calls one connection has in flight; more wait their turn.  Servers
cancel calls beyond their own pending limit, so a burst must not reach them whole."""
MAX_WATCHES = 2048
"""WatchTask streams one connection holds open; more tasks wait for a slot."""
DEFAULT_RPC_TIMEOUT = 60.0
"""Deadline for every unary Frontend call, so that no call can hang."""
REWATCH_DELAY = 0.05
NO_FAILURE_MESSAGE = "task failed and the server recorded no error message"


def generate_session_id(application: str) -> str:
    """``<app>-<6 random [A-Za-z0-9]>``, the id format of Flame's own SDK."""
    suffix = "".join(random.choices(string.ascii_letters + string.digits, k=6))
    return f"{application}-{suffix}"


def task_outcome(task: Task) -> bytes | None:
    """Return a terminal task's output, or raise the error its state stands for."""
    if task.state == TaskState.SUCCEED:
        return task.output  # type: ignore[no-any-return]
    if task.state == TaskState.CANCELLED:
        raise TaskCancelledError(
            f"task {task.session_id}/{task.id} was cancelled: its session was closed "
            "before the task ran",
            session_id=task.session_id,
            task_id=task.id,
        )
    if task.state == TaskState.FAILED:
        raise TaskFailedError(
            task.failure_message() or NO_FAILURE_MESSAGE,
            session_id=task.session_id,
            task_id=task.id,
        )
    raise InvalidArgumentError(
        f"task {task.session_id}/{task.id} is not finished ({task.state.name})"
    )


class AsyncConnection:
    """A connection to a Flame session manager (Frontend service)."""

    def __init__(self, endpoint: str, channel: grpc.aio.Channel | None) -> None:
        """``channel`` None: the Frontend is served in this process (``_inproc``)."""
        self.endpoint = endpoint
        self._channel = channel
        self._stub: Any
        if channel is not None:
            self._stub = frontend_pb2_grpc.FrontendStub(channel)  # type: ignore[no-untyped-call]
        else:
            target = lookup(endpoint)
            if target is None:
                raise InvalidArgumentError(f"no in-process Frontend serves {endpoint}")
            self._stub = InProcessStub(target)
        self.rpc_timeout = DEFAULT_RPC_TIMEOUT
        self.lease: str | None = None
        """An owner identity (``flamepy._owner``) sent with the calls that create
        applications and sessions: a local cluster reaps them once that process is
        gone.  The Runner sets it; plain connections create long-lived things."""
        self._unary_slots = asyncio.Semaphore(MAX_UNARY_IN_FLIGHT)
        self._watch_slots = asyncio.Semaphore(MAX_WATCHES)

    @classmethod
    async def connect(
        cls,
        endpoint: str,
        *,
        ca_file: str | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> AsyncConnection:
        """Open a channel and wait (at most ``timeout`` s) until it is ready.

        An endpoint served in this very process (the embedded cluster) is called
        in-process instead (see ``flamepy._inproc``)."""
        if lookup(endpoint) is not None:
            return cls(endpoint, None)
        channel = open_channel(endpoint, ca_file)
        try:
            await wait_ready(channel, endpoint, timeout)
        except BaseException:
            await channel.close()
            raise
        return cls(endpoint, channel)

    @property
    def in_process(self) -> bool:
        """Whether calls go straight to a Frontend served by this process."""
        return self._channel is None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(
        self, what: str, call: Callable[..., Awaitable[T]], request: Any, owned: bool = False
    ) -> T:
        """``owned``: the call creates something this connection's lease holds."""
        try:
            async with self._unary_slots:
                if owned and self.lease is not None:
                    metadata = ((LEASE_METADATA, self.lease),)
                    return await call(request, timeout=self.rpc_timeout, metadata=metadata)
                return await call(request, timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, what) from exc

    async def _checked(
        self, what: str, call: Callable[..., Awaitable[Any]], request: Any, owned: bool = False
    ) -> None:
        result = await self._unary(what, call, request, owned)
        if result.return_code != 0:
            message = result.message if result.HasField("message") else None
            raise from_result(result.return_code, message, what)

    # -- applications ---------------------------------------------------------------

    async def register_application(
        self, name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]
    ) -> None:
        spec = application_spec_to_proto(application_attributes(app_attrs))
        request = fe.RegisterApplicationRequest(name=name, application=spec)
        await self._checked(
            f"RegisterApplication({name})", self._stub.RegisterApplication, request, owned=True
        )

    async def update_application(
        self, name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]
    ) -> None:
        spec = application_spec_to_proto(application_attributes(app_attrs))
        request = fe.UpdateApplicationRequest(name=name, application=spec)
        await self._checked(f"UpdateApplication({name})", self._stub.UpdateApplication, request)

    async def unregister_application(self, name: str) -> None:
        request = fe.UnregisterApplicationRequest(name=name)
        await self._checked(
            f"UnregisterApplication({name})", self._stub.UnregisterApplication, request
        )

    async def get_application(self, name: str) -> Application | None:
        try:
            app = await self._unary(
                f"GetApplication({name})",
                self._stub.GetApplication,
                fe.GetApplicationRequest(name=name),
            )
        except NotFoundError:
            return None
        return application_from_proto(app)

    async def list_applications(self) -> list[Application]:
        reply = await self._unary(
            "ListApplication", self._stub.ListApplication, fe.ListApplicationRequest()
        )
        return [application_from_proto(a) for a in reply.applications]

    async def list_executors(self) -> list[Executor]:
        reply = await self._unary("ListExecutor", self._stub.ListExecutor, fe.ListExecutorRequest())
        return [executor_from_proto(e) for e in reply.executors]

    async def list_nodes(self) -> list[Node]:
        reply = await self._unary("ListNodes", self._stub.ListNodes, fe.ListNodesRequest())
        return [node_from_proto(n) for n in reply.nodes]

    # -- sessions -------------------------------------------------------------------

    @staticmethod
    def session_spec(attrs: SessionAttributes) -> types_pb2.SessionSpec:
        if not attrs.application:
            raise InvalidArgumentError("a session needs an application name")
        common = attrs.common_data
        if common is not None and not isinstance(common, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(
                f"common_data must be bytes, not {type(common).__name__}; serialize it first "
                "(the Runner API does this for you)"
            )
        if attrs.min_instances < 0 or (attrs.max_instances is not None and attrs.max_instances < 0):
            raise InvalidArgumentError("min_instances and max_instances must not be negative")
        if attrs.max_instances is not None and attrs.max_instances < attrs.min_instances:
            raise InvalidArgumentError(
                f"max_instances ({attrs.max_instances}) is below min_instances "
                f"({attrs.min_instances})"
            )
        spec = types_pb2.SessionSpec(
            application=attrs.application,
            min_instances=attrs.min_instances,
            batch_size=attrs.batch_size,
        )
        if common is not None:
            spec.common_data = bytes(common)
        if attrs.max_instances is not None:
            spec.max_instances = attrs.max_instances
        if attrs.resreq is not None:
            spec.resreq.CopyFrom(resreq_to_proto(attrs.resreq))
        return spec

    async def create_session(self, attrs: SessionAttributes) -> AsyncSession:
        session_id = attrs.id or generate_session_id(attrs.application)
        request = fe.CreateSessionRequest(session_id=session_id, session=self.session_spec(attrs))
        reply = await self._unary(
            f"CreateSession({session_id})", self._stub.CreateSession, request, owned=True
        )
        return AsyncSession(self, reply)

    async def open_session(
        self, session_id: str, spec: SessionAttributes | None = None
    ) -> AsyncSession:
        request = fe.OpenSessionRequest(session_id=session_id)
        if spec is not None:
            request.session.CopyFrom(self.session_spec(spec))
        reply = await self._unary(
            f"OpenSession({session_id})", self._stub.OpenSession, request, owned=True
        )
        return AsyncSession(self, reply)

    async def get_session(self, session_id: str) -> AsyncSession:
        request = fe.GetSessionRequest(session_id=session_id)
        reply = await self._unary(f"GetSession({session_id})", self._stub.GetSession, request)
        return AsyncSession(self, reply)

    async def list_sessions(self) -> list[AsyncSession]:
        reply = await self._unary("ListSession", self._stub.ListSession, fe.ListSessionRequest())
        return [AsyncSession(self, s) for s in reply.sessions]

    async def close_session(self, session_id: str) -> AsyncSession:
        request = fe.CloseSessionRequest(session_id=session_id)
        reply = await self._unary(f"CloseSession({session_id})", self._stub.CloseSession, request)
        return AsyncSession(self, reply)

    async def delete_session(self, session_id: str) -> AsyncSession:
        request = fe.DeleteSessionRequest(session_id=session_id)
        reply = await self._unary(f"DeleteSession({session_id})", self._stub.DeleteSession, request)
        return AsyncSession(self, reply)

    # -- tasks ----------------------------------------------------------------------

    async def create_task(self, session_id: str, input_data: bytes | None) -> Task:
        return task_from_proto(await self._create_task(session_id, input_data))

    async def create_task_id(self, session_id: str, input_data: bytes | None) -> str:
        """:meth:`create_task`, returning only the new task's id (nothing converted)."""
        return str((await self._create_task(session_id, input_data)).metadata.id)

    async def _create_task(self, session_id: str, input_data: bytes | None) -> types_pb2.Task:
        if input_data is not None and not isinstance(input_data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(
                f"task input must be bytes, not {type(input_data).__name__}; serialize it first"
            )
        spec = types_pb2.TaskSpec(session_id=session_id)
        if input_data is not None:
            spec.input = bytes(input_data)
        reply: types_pb2.Task = await self._unary(
            f"CreateTask({session_id})", self._stub.CreateTask, fe.CreateTaskRequest(task=spec)
        )
        return reply

    async def get_task(self, session_id: str, task_id: str) -> Task:
        request = fe.GetTaskRequest(task_id=str(task_id), session_id=session_id)
        reply = await self._unary(f"GetTask({session_id}/{task_id})", self._stub.GetTask, request)
        return task_from_proto(reply)

    async def list_tasks(self, session_id: str) -> AsyncIterator[Task]:
        call = self._stub.ListTask(fe.ListTaskRequest(session_id=session_id))
        try:
            async for task in call:
                yield task_from_proto(task)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, f"ListTask({session_id})") from exc
        finally:
            call.cancel()

    async def watch_task(self, session_id: str, task_id: str) -> AsyncIterator[Task]:
        """Yield the task each time its state changes, ending with its terminal state.

        The server may end the stream silently (unknown task, restart); we then ask
        GetTask, which raises NotFoundError for an unknown task, and watch again if
        the task is still running.  A Failed task is fetched once with GetTask,
        because the watch stream usually carries no failure events.
        """
        what = f"WatchTask({session_id}/{task_id})"
        async with self._watch_slots:
            async for task in self._watch(what, session_id, task_id):
                yield task

    async def follow_task(
        self, session_id: str, task_id: str, on_state: Callable[[TaskState], None]
    ) -> Task:
        """:meth:`watch_task` for a caller that needs only the states before the end:
        ``on_state`` gets each one, and the terminal task is returned (the only
        message converted)."""
        what = f"WatchTask({session_id}/{task_id})"
        final: Task | None = None
        async with self._watch_slots:
            # Read to its end (it yields once here), so the generator finishes now.
            async for task in self._watch(what, session_id, task_id, on_state):
                final = task
        assert final is not None
        return final

    async def _watch(
        self,
        what: str,
        session_id: str,
        task_id: str,
        on_state: Callable[[TaskState], None] | None = None,
    ) -> AsyncIterator[Task]:
        """Each change of the task, ending with its terminal state; with
        ``on_state``, the changes before the end go to it (unconverted) and only
        the terminal task is yielded."""
        while True:
            call = self._stub.WatchTask(
                fe.WatchTaskRequest(task_id=str(task_id), session_id=session_id)
            )
            terminal: Task | None = None
            try:
                async for msg in call:
                    state = task_state(msg.status.state)
                    if state.is_terminal:
                        terminal = task_from_proto(msg)
                        # The stream closes after its first terminal message.  In
                        # process, reading on to that end lets the servicer's stream
                        # finish by itself rather than be closed at our cancel.
                        if not self.in_process:
                            break
                        continue
                    if on_state is None:
                        yield task_from_proto(msg)
                    else:
                        on_state(state)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc, what) from exc
            finally:
                call.cancel()
            final = await self._terminal(session_id, task_id, terminal)
            if final is not None:
                yield final
                return

    async def _terminal(self, session_id: str, task_id: str, seen: Task | None) -> Task | None:
        """The task's terminal state after its watch stream ended (``seen``: the
        terminal message it carried); None when it must be watched again."""
        if seen is None:
            current = await self.get_task(session_id, task_id)
            if not current.state.is_terminal:
                await asyncio.sleep(REWATCH_DELAY)
                return None
            return current
        if seen.state == TaskState.FAILED and not seen.failure_message():
            return await self.get_task(session_id, task_id)
        return seen

    async def wait_task(self, session_id: str, task_id: str, timeout: float | None = None) -> Task:
        """Wait until the task is terminal and return it (never raises for its state)."""

        async def _last() -> Task:
            last: Task | None = None
            async for task in self.watch_task(session_id, task_id):
                last = task
            assert last is not None
            return last

        try:
            return await asyncio.wait_for(_last(), timeout)
        except asyncio.TimeoutError:
            raise FlameTimeoutError(
                f"task {session_id}/{task_id} did not finish within {timeout:g}s"
            ) from None

    async def run_task(
        self, session_id: str, input_data: bytes | None, timeout: float | None = None
    ) -> bytes | None:
        """Create a task, wait for it, and return its output or raise its error."""
        task = await self.create_task(session_id, input_data)
        return task_outcome(await self.wait_task(session_id, task.id, timeout))


class AsyncSession:
    """A session bound to an :class:`AsyncConnection`; a snapshot plus task methods."""

    def __init__(self, connection: AsyncConnection, session: types_pb2.Session) -> None:
        self.connection = connection
        self._update(session)

    def _update(self, session: types_pb2.Session) -> None:
        status = session.status
        self.id: str = session.metadata.id
        self.application: str = session.spec.application
        self.state = SessionState(status.state)
        self.creation_time: datetime = ms_to_datetime(status.creation_time)
        self.completion_time: datetime | None = (
            ms_to_datetime(status.completion_time) if status.HasField("completion_time") else None
        )
        self.pending: int = status.pending
        self.running: int = status.running
        self.succeed: int = status.succeed
        self.failed: int = status.failed
        self.cancelled: int = status.cancelled
        self.events: list[Event] = events_from_proto(status.events)
        self.min_instances: int = session.spec.min_instances
        self.max_instances: int | None = (
            session.spec.max_instances if session.spec.HasField("max_instances") else None
        )
        self.resreq: ResourceRequirement | None = None
        if session.spec.HasField("resreq"):
            r = session.spec.resreq
            self.resreq = ResourceRequirement(cpu=r.cpu, memory=r.memory, gpu=r.gpu)
        self._common_data: bytes | None = (
            session.spec.common_data if session.spec.HasField("common_data") else None
        )

    def common_data(self) -> bytes | None:
        return self._common_data

    def __repr__(self) -> str:
        return f"<AsyncSession {self.id} app={self.application} {self.state.name}>"

    async def refresh(self) -> AsyncSession:
        fresh = await self.connection.get_session(self.id)
        self.__dict__.update(fresh.__dict__)
        return self

    async def create_task(self, input_data: bytes | None) -> Task:
        return await self.connection.create_task(self.id, input_data)

    async def get_task(self, task_id: str) -> Task:
        return await self.connection.get_task(self.id, task_id)

    def list_tasks(self) -> AsyncIterator[Task]:
        return self.connection.list_tasks(self.id)

    def watch_task(self, task_id: str) -> AsyncIterator[Task]:
        return self.connection.watch_task(self.id, task_id)

    async def wait_task(self, task_id: str, timeout: float | None = None) -> Task:
        return await self.connection.wait_task(self.id, task_id, timeout)

    async def invoke(self, input_data: bytes | None, timeout: float | None = None) -> bytes | None:
        """Run one task and return its output; raise TaskFailedError etc. on failure."""
        return await self.connection.run_task(self.id, input_data, timeout)

    def run(
        self, input_data: bytes | None, timeout: float | None = None
    ) -> asyncio.Task[bytes | None]:
        """Start :meth:`invoke` as an asyncio task."""
        return asyncio.ensure_future(self.invoke(input_data, timeout))

    async def close(self) -> None:
        fresh = await self.connection.close_session(self.id)
        self.__dict__.update(fresh.__dict__)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.state == SessionState.OPEN:
            await self.close()
