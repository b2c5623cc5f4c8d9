"""Synchronous API: a thin facade over the asyncio core on one background loop.

The names and signatures follow Flame's own Python SDK, so code written for it
runs unchanged.  Each blocking method submits one coroutine to the shared loop
(:mod:`flamepy._loop`); ``Session.run`` returns a future without blocking, so
thousands of in-flight tasks cost coroutines, not threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from flamepy._async_client import AsyncConnection, AsyncSession
from flamepy._config import DEFAULT_CONNECT_TIMEOUT, FlameClientTls, FlameContext
from flamepy._errors import FlameTimeoutError
from flamepy._loop import BackgroundLoop, background_loop
from flamepy._types import (
    Application,
    ApplicationAttributes,
    Executor,
    Node,
    ResourceRequirement,
    SessionAttributes,
    Task,
)

T = TypeVar("T")


class TaskFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The output of a task that is running: ``result(timeout)`` or ``await``.

    A ``concurrent.futures.Future`` (as in Flame's SDK), which can also be awaited
    from asyncio code.  It fails with TaskFailedError or TaskCancelledError.
    """

    def __await__(self) -> Any:
        return asyncio.wrap_future(self).__await__()


def _chain(source: concurrent.futures.Future[T], target: concurrent.futures.Future[T]) -> None:
    def _done(fut: concurrent.futures.Future[T]) -> None:
        if target.done():
            return
        if fut.cancelled():
            target.cancel()
        elif (exc := fut.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(fut.result())

    source.add_done_callback(_done)

    def _cancel(fut: concurrent.futures.Future[T]) -> None:
        if fut.cancelled():
            source.cancel()

    target.add_done_callback(_cancel)


class _SyncIterator(Iterator[T]):
    """Iterate an async iterator that lives on the background loop."""

    def __init__(self, loop: BackgroundLoop, agen: AsyncIterator[T], timeout: float | None) -> None:
        self._loop = loop
        self._agen = agen
        self._timeout = timeout

    def __iter__(self) -> _SyncIterator[T]:
        return self

    def __next__(self) -> T:
        async def _next() -> T:
            return await self._agen.__anext__()

        try:
            return self._loop.run(_next(), self._timeout)
        except StopAsyncIteration:
            raise StopIteration from None
        except FlameTimeoutError:
            self.close()
            raise

    def close(self) -> None:
        aclose = getattr(self._agen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                self._loop.run(aclose(), 5.0)


class TaskWatcher(_SyncIterator[Task]):
    """Iterator of a task's state changes, ending with its terminal state."""


class Session:
    """A Flame session: a snapshot of its attributes plus task methods."""

    def __init__(self, connection: Connection, inner: AsyncSession) -> None:
        self.connection = connection
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        # Snapshot attributes (id, application, state, counters, ...) live on the core.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<Session {self._inner.id} app={self._inner.application} {self._inner.state.name}>"

    @property
    def id(self) -> str:
        return self._inner.id

    def common_data(self) -> bytes | None:
        return self._inner.common_data()

    def refresh(self) -> Session:
        self.connection._run(self._inner.refresh())
        return self

    def create_task(self, input_data: bytes | None) -> Task:
        return self.connection._run(self._inner.create_task(input_data))

    def get_task(self, task_id: str) -> Task:
        return self.connection._run(self._inner.get_task(task_id))

    def list_tasks(self) -> Iterator[Task]:
        return _SyncIterator(self.connection._loop, self._inner.list_tasks(), None)

    def watch_task(self, task_id: str, timeout: float | None = None) -> TaskWatcher:
        return TaskWatcher(self.connection._loop, self._inner.watch_task(task_id), timeout)

    def wait_task(self, task_id: str, timeout: float | None = None) -> Task:
        """Block until the task is terminal (at most ``timeout`` s) and return it."""
        return self.connection._run(self._inner.wait_task(task_id, timeout))

    def invoke(self, input_data: bytes | None, timeout: float | None = None) -> bytes | None:
        """Run one task and return its output; raise TaskFailedError etc. on failure."""
        return self.connection._run(self._inner.invoke(input_data, timeout))

    def run(self, input_data: bytes | None, timeout: float | None = None) -> TaskFuture:
        """Submit one task and return a future of its output, without blocking."""
        future = TaskFuture()
        _chain(self.connection._loop.submit(self._inner.invoke(input_data, timeout)), future)
        return future

    def close(self) -> None:
        self.connection._run(self._inner.close())

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        from flamepy._types import SessionState

        if self._inner.state == SessionState.OPEN:
            self.close()


class Connection:
    """A blocking connection to a Flame session manager."""

    def __init__(self, inner: AsyncConnection, loop: BackgroundLoop) -> None:
        self._inner = inner
        self._loop = loop

    @property
    def endpoint(self) -> str:
        return self._inner.endpoint

    @classmethod
    def connect(
        cls,
        addr: str,
        tls_config: FlameClientTls | None = None,
        *,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> Connection:
        loop = background_loop()
        ca_file = tls_config.ca_file if tls_config else None
        inner = loop.run(AsyncConnection.connect(addr, ca_file=ca_file, timeout=timeout))
        return cls(inner, loop)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def close(self) -> None:
        self._run(self._inner.close())

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register_application(
        self, name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]
    ) -> None:
        self._run(self._inner.register_application(name, app_attrs))

    def update_application(
        self, name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]
    ) -> None:
        self._run(self._inner.update_application(name, app_attrs))

    def unregister_application(self, name: str) -> None:
        self._run(self._inner.unregister_application(name))

    def list_applications(self) -> list[Application]:
        return self._run(self._inner.list_applications())

    def get_application(self, name: str) -> Application | None:
        return self._run(self._inner.get_application(name))

    def list_executors(self) -> list[Executor]:
        return self._run(self._inner.list_executors())

    def list_nodes(self) -> list[Node]:
        return self._run(self._inner.list_nodes())

    def create_session(self, attrs: SessionAttributes) -> Session:
        return Session(self, self._run(self._inner.create_session(attrs)))

    def list_sessions(self) -> list[Session]:
        return [Session(self, s) for s in self._run(self._inner.list_sessions())]

    def open_session(self, session_id: str, spec: SessionAttributes | None = None) -> Session:
        return Session(self, self._run(self._inner.open_session(session_id, spec)))

    def get_session(self, session_id: str) -> Session:
        return Session(self, self._run(self._inner.get_session(session_id)))

    def close_session(self, session_id: str) -> Session:
        return Session(self, self._run(self._inner.close_session(session_id)))

    def delete_session(self, session_id: str) -> Session:
        return Session(self, self._run(self._inner.delete_session(session_id)))


# -- the process-wide default connection -------------------------------------------

_default_lock = threading.Lock()
_default: Connection | None = None


def connect(addr: str, tls_config: FlameClientTls | None = None) -> Connection:
    """Open a new connection to the session manager at ``addr``."""
    return Connection.connect(addr, tls_config)


def default_connection() -> Connection:
    """The shared connection built from FlameContext (flame.yaml + FLAME_* variables).

    With no endpoint configured and flame-testkit installed, a local cluster is
    started in-process for the life of the program (see :mod:`flamepy._embedded`).
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                from flamepy._embedded import resolve_endpoint

                ctx = FlameContext()
                endpoint = resolve_endpoint(ctx)
                conn = Connection.connect(endpoint, ctx.tls, timeout=ctx.connect_timeout)
                conn._loop.add_closer(conn._inner.close)
                _default = conn
    return _default


def reset_default_connection() -> None:
    """Close and forget the shared connection (the next call reconnects)."""
    global _default
    with _default_lock:
        conn, _default = _default, None
    if conn is not None:
        conn.close()


def create_session(
    application: str,
    common_data: bytes | None = None,
    session_id: str | None = None,
    min_instances: int = 0,
    max_instances: int | None = None,
    batch_size: int = 1,
    resreq: ResourceRequirement | None = None,
) -> Session:
    attrs = SessionAttributes(
        application=application,
        id=session_id,
        common_data=common_data,
        min_instances=min_instances,
        max_instances=max_instances,
        batch_size=batch_size,
        resreq=resreq,
    )
    return default_connection().create_session(attrs)


def open_session(session_id: str, spec: SessionAttributes | None = None) -> Session:
    return default_connection().open_session(session_id, spec)


def close_session(session_id: str) -> Session:
    return default_connection().close_session(session_id)


def get_session(session_id: str) -> Session:
    return default_connection().get_session(session_id)


def list_sessions() -> list[Session]:
    return default_connection().list_sessions()


def register_application(name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]) -> None:
    default_connection().register_application(name, app_attrs)


def unregister_application(name: str) -> None:
    default_connection().unregister_application(name)


def get_application(name: str) -> Application | None:
    return default_connection().get_application(name)


def list_applications() -> list[Application]:
    return default_connection().list_applications()


def list_executors() -> list[Executor]:
    return default_connection().list_executors()


def list_nodes() -> list[Node]:
    return default_connection().list_nodes()
