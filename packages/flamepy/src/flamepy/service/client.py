"""The client side of ``flamepy.service``: :class:`Session` and :class:`AsyncSession`.

A service session is a core session of the application ``name`` whose task
inputs and outputs are cloudpickled Python values and whose common data is a
context object kept in the object cache (see :mod:`flamepy.service._common`).
The instance side is :class:`flamepy.service.FlameInstance`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, TypeAlias

from flamepy._async_client import AsyncConnection
from flamepy._async_client import AsyncSession as CoreAsyncSession
from flamepy._client import Connection, default_connection
from flamepy._client import Session as CoreSession
from flamepy._config import FlameContext
from flamepy._errors import InvalidStateError
from flamepy._types import ResourceRequirement, SessionAttributes
from flamepy.core.cache import (
    ObjectRef,
    delete_objects,
    delete_objects_async,
    get_object,
    get_object_async,
    put_object,
    put_object_async,
)
from flamepy.service._common import check_target, dumps, loads, resource_requirement
from flamepy.util import short_name

__all__ = ["AsyncSession", "Session"]

log = logging.getLogger("flamepy.service")

ResReq: TypeAlias = "ResourceRequirement | Mapping[str, Any] | None"


def _context_of(common_data: bytes | None) -> ObjectRef | None:
    return None if common_data is None else ObjectRef.decode(common_data)


class Session:
    """A session of the service application ``name``, with Python values in and out.

    ``Session(name, ctx)`` creates a session; ``ctx`` (any picklable value, or None)
    is the context every instance of the session can read and update.
    ``Session(session_id=...)`` opens an existing session instead::

        with Session("agent", {"history": []}) as session:
            answer = session.invoke("question")
            print(session.context())

    ``resreq`` is a :class:`~flamepy.ResourceRequirement` or a dict such as
    ``{"cpu": 2, "memory": "4g", "gpu": 0}``; without it the cluster's default
    applies.  ``connection`` (an extension of 0.6's signature) uses that
    connection instead of the shared one configured by FLAME_ENDPOINT / flame.yaml.

    Raises InvalidArgumentError when neither or both of ``name`` and ``session_id``
    are given, and the client's errors (NotFoundError, ...) when the call fails.
    """

    def __init__(
        self,
        name: str | None = None,
        ctx: Any | None = None,
        session_id: str | None = None,
        resreq: ResReq = None,
        *,
        connection: Connection | None = None,
    ) -> None:
        check_target(name, session_id)
        requirement = resource_requirement(resreq)
        conn = connection if connection is not None else default_connection()
        self._name = name
        self._session: CoreSession | None = None
        if session_id is not None:
            self._session = conn.open_session(session_id)
            self._name = self._session.application
            return
        assert name is not None
        attrs = SessionAttributes(application=name, resreq=requirement)
        if ctx is not None:
            attrs.id = short_name(name)
            attrs.common_data = put_object(f"{name}/{attrs.id}", dumps(ctx)).encode()
        try:
            self._session = conn.create_session(attrs)
        except BaseException:
            if attrs.id is not None:
                _forget_context(f"{name}/{attrs.id}")
            raise

    @property
    def name(self) -> str | None:
        """The application's name."""
        return self._name

    def _open(self) -> CoreSession:
        if self._session is None:
            raise InvalidStateError("the service session is closed")
        return self._session

    def invoke(self, req: Any, timeout: float | None = None) -> Any:
        """Run one task with input ``req`` and return the entrypoint's return value.

        Raises TaskFailedError (with the instance's error text) when the entrypoint
        raised, and FlameTimeoutError after ``timeout`` seconds.
        """
        output = self._open().invoke(dumps(req), timeout)
        return None if output is None else loads(output)

    def context(self) -> Any:
        """The session's context as last stored (by the client or an instance's
        ``update_context``), or None when the session has none or is closed."""
        if self._session is None:
            return None
        ref = _context_of(self._session.common_data())
        return None if ref is None else loads(get_object(ref))

    def id(self) -> str | None:
        """The session id, or None once the session is closed."""
        return None if self._session is None else self._session.id

    def close(self) -> None:
        """Close the session; its pending tasks are cancelled.  Closing twice is a no-op."""
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._session is None else self._session.id
        return f"<flamepy.service.Session {self._name} {state}>"


def _forget_context(key_prefix: str) -> None:
    try:
        delete_objects(key_prefix)
    except Exception:  # best effort: the session was not created anyway
        log.debug("could not delete the context objects under %s", key_prefix, exc_info=True)


class AsyncSession:
    """The asyncio form of :class:`Session` (flamepy's own; 0.6 has none).

    The constructor does no I/O; the session is created (or opened) by
    ``await session.open()``, by ``async with``, or by the first ``invoke``::

        async with AsyncSession("agent", ctx) as session:
            answers = await asyncio.gather(*(session.invoke(q) for q in questions))

    ``connection`` is an :class:`~flamepy.AsyncConnection` to use (and not close);
    without it the session opens its own from FLAME_ENDPOINT / flame.yaml.
    """

    def __init__(
        self,
        name: str | None = None,
        ctx: Any | None = None,
        session_id: str | None = None,
        resreq: ResReq = None,
        *,
        connection: AsyncConnection | None = None,
    ) -> None:
        check_target(name, session_id)
        self._resreq = resource_requirement(resreq)
        self._name = name
        self._ctx = ctx
        self._session_id = session_id
        self._connection = connection
        self._own_connection: AsyncConnection | None = None
        self._session: CoreAsyncSession | None = None
        self._closed = False
        self._lock: asyncio.Lock | None = None

    @classmethod
    async def create(
        cls,
        name: str | None = None,
        ctx: Any | None = None,
        session_id: str | None = None,
        resreq: ResReq = None,
        *,
        connection: AsyncConnection | None = None,
    ) -> AsyncSession:
        """Build the session and open it: ``await AsyncSession.create(name, ctx)``."""
        return await cls(name, ctx, session_id, resreq, connection=connection).open()

    @property
    def name(self) -> str | None:
        return self._name

    async def _connect(self) -> AsyncConnection:
        if self._connection is not None:
            return self._connection
        from flamepy._embedded import resolve_endpoint

        ctx = FlameContext()
        endpoint = await asyncio.to_thread(resolve_endpoint, ctx)
        tls = ctx.tls
        conn = await AsyncConnection.connect(
            endpoint, ca_file=tls.ca_file if tls else None, timeout=ctx.connect_timeout
        )
        self._own_connection = conn
        return conn

    async def open(self) -> AsyncSession:
        """Create or open the session (once; later calls return at once)."""
        if self._closed:
            raise InvalidStateError("the service session is closed")
        if self._session is not None:
            return self
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._session is None:
                try:
                    self._session = await self._start(await self._connect())
                except BaseException:
                    await self._drop_connection()
                    raise
        return self

    async def _start(self, conn: AsyncConnection) -> CoreAsyncSession:
        if self._session_id is not None:
            session = await conn.open_session(self._session_id)
            self._name = session.application
            return session
        assert self._name is not None
        attrs = SessionAttributes(application=self._name, resreq=self._resreq)
        if self._ctx is not None:
            attrs.id = short_name(self._name)
            ref = await put_object_async(f"{self._name}/{attrs.id}", dumps(self._ctx))
            attrs.common_data = ref.encode()
        self._ctx = None  # stored: the session no longer holds on to it
        try:
            return await conn.create_session(attrs)
        except BaseException:
            if attrs.id is not None:
                try:
                    await delete_objects_async(f"{self._name}/{attrs.id}")
                except Exception:
                    log.debug("could not delete the context of %s", attrs.id, exc_info=True)
            raise

    async def _drop_connection(self) -> None:
        conn, self._own_connection = self._own_connection, None
        if conn is not None:
            await conn.close()

    async def invoke(self, req: Any, timeout: float | None = None) -> Any:
        """Run one task with input ``req`` and return the entrypoint's return value."""
        await self.open()
        assert self._session is not None
        output = await self._session.invoke(dumps(req), timeout)
        return None if output is None else loads(output)

    async def context(self) -> Any:
        """The session's context as last stored, or None (no context, or closed)."""
        if self._closed:
            return None
        await self.open()
        assert self._session is not None
        ref = _context_of(self._session.common_data())
        return None if ref is None else loads(await get_object_async(ref))

    def id(self) -> str | None:
        """The session id; None before the session is opened and after it is closed."""
        return None if self._session is None else self._session.id

    async def close(self) -> None:
        """Close the session (if it was opened) and the connection it opened."""
        self._closed = True
        session, self._session = self._session, None
        try:
            if session is not None:
                await session.close()
        finally:
            await self._drop_connection()

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else (self.id() or "not opened")
        return f"<flamepy.service.AsyncSession {self._name} {state}>"
