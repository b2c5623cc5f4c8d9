"""The service interface an instance serves, and the contexts handed to it.

A service subclasses :class:`FlameService` and overrides some of its three hooks. The
executor calls them in a fixed order on one instance process::

    on_session_enter(SessionContext)      once, when the instance is bound to a session
    on_task_invoke(TaskContext)           once per task, strictly one at a time
    on_session_leave()                    once, before the process receives SIGTERM

Each hook may be written as a plain ``def`` or as an ``async def``. The server runs plain
methods in a worker thread, so a long computation never blocks the gRPC event loop, and
awaits coroutine methods on the loop itself (they must not block).

The dataclasses mirror the ``flame.v1`` messages ``ApplicationContext``, ``SessionContext``
and ``TaskContext``; proto3 ``optional`` fields that are unset become ``None``. This module
does not import grpc or protobuf.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

__all__ = ["ApplicationContext", "FlameService", "SessionContext", "TaskContext"]


@dataclass(frozen=True)
class ApplicationContext:
    """The application the bound session runs.

    The fields and their order are those of Flame's SDK 0.6 (``name``, ``image``,
    ``command``, ``working_directory``, ``url``), then the two 0.6 did not carry
    (``shim``, ``installer``).  ``working_directory`` is the application's configured
    directory, which is not necessarily the process's current directory. Arguments
    and environment variables are not part of this context: the instance sees them
    only through argv and ``os.environ``.
    """

    name: str
    image: str | None = None
    command: str | None = None
    working_directory: str | None = None
    url: str | None = None
    shim: int = 0
    installer: str | None = None


@dataclass(frozen=True)
class SessionContext:
    """The session an instance is bound to, given to :meth:`FlameService.on_session_enter`.

    As in Flame's SDK 0.6: :meth:`common_data` returns the session's opaque payload,
    passed through unchanged, or ``None`` when the session has none; it is built as
    ``SessionContext(common_data_bytes, session_id, application)``.
    """

    _common_data: bytes | None
    session_id: str
    application: ApplicationContext

    def common_data(self) -> bytes | None:
        """The session's common data, or None."""
        return self._common_data


@dataclass(frozen=True)
class TaskContext:
    """One task, given to :meth:`FlameService.on_task_invoke`.

    ``task_id`` is the decimal per-session task number as a string; ``input`` is the task's
    payload, or ``None`` when the task has none.
    """

    task_id: str
    session_id: str
    input: bytes | None = None


class FlameService:
    """Base class of a service run by an instance process.

    Override :meth:`on_task_invoke` (required) and, if needed, :meth:`on_session_enter`
    and :meth:`on_session_leave`. Any of them may be ``async def``; the return annotations
    admit an awaitable so that such overrides type-check.

    An exception raised by a hook is reported to Flame as a failure (the task becomes
    Failed, or the binding fails) with the text ``"<ExcType>: <message>\\n<traceback>"``.
    The process keeps serving afterwards.
    """

    def on_session_enter(self, context: SessionContext) -> Awaitable[None] | None:
        """Prepare for the session's tasks. The default does nothing."""
        return None

    def on_task_invoke(self, context: TaskContext) -> bytes | Awaitable[bytes | None] | None:
        """Run one task and return its output (``bytes``) or ``None`` for no output."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement on_task_invoke")

    def on_session_leave(self) -> Awaitable[None] | None:
        """Release what the session needed. The default does nothing."""
        return None
