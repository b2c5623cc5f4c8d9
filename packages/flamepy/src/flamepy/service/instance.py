"""The instance side of ``flamepy.service``: :class:`FlameInstance`.

A script builds one FlameInstance, marks its entrypoint and runs it as the
application's command::

    from flamepy.service import FlameInstance

    instance = FlameInstance()

    @instance.entrypoint
    def answer(question: str) -> str:
        history = instance.context()["history"]
        instance.update_context({"history": [*history, question]})
        return f"#{len(history) + 1}: {question}"

    if __name__ == "__main__":
        instance.run()

:meth:`FlameInstance.run` serves the ``flame.v1.Instance`` service with flmrun
(the flmrun wheel of this release: docs/install.md), which flamepy itself does
not need: it is imported only there.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from flamepy._errors import FlameUsageError, InvalidArgumentError
from flamepy.core.cache import ObjectRef, get_object, update_object
from flamepy.service._common import dumps, loads

if TYPE_CHECKING:
    import flmrun

__all__ = ["FlameInstance"]

log = logging.getLogger("flamepy.service")

F = TypeVar("F", bound=Callable[..., Any])

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _SessionContext(Protocol):
    """What :meth:`FlameInstance.on_session_enter` reads (flmrun's SessionContext,
    whose ``common_data()`` is a method, as in Flame's SDK)."""

    def common_data(self) -> bytes | None: ...


class _TaskContext(Protocol):
    """What :meth:`FlameInstance.on_task_invoke` reads (flmrun's TaskContext)."""

    @property
    def input(self) -> bytes | None: ...


class FlameInstance:
    """A service instance: one entrypoint function and the session's context.

    The entrypoint takes zero or one parameter (the task's input, unpickled) and
    may be ``async def``; its return value is the task's output (None: no output).
    Coroutine entrypoints run on an event loop of the instance's own, kept across
    tasks, so loop-bound resources (clients, pools) may be reused.
    """

    def __init__(self) -> None:
        self._entrypoint: Callable[..., Any] | None = None
        self._takes_input = False
        self._object_ref: ObjectRef | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the author's API -----------------------------------------------------------

    def entrypoint(self, func: F) -> F:
        """Decorator: make ``func`` the function each task calls; returns ``func``.

        Raises InvalidArgumentError unless ``func`` takes zero parameters or one
        positional parameter.
        """
        if not callable(func):
            raise InvalidArgumentError(
                f"the entrypoint must be a function, not {type(func).__name__}"
            )
        params = list(inspect.signature(func).parameters.values())
        name = getattr(func, "__qualname__", repr(func))
        if len(params) > 1:
            raise InvalidArgumentError(
                f"entrypoint {name} takes {len(params)} parameters: it must take zero or "
                "one (the task's input; pass several values as one tuple or dict)"
            )
        if params and params[0].kind not in _POSITIONAL:
            raise InvalidArgumentError(
                f"the parameter {params[0].name!r} of entrypoint {name} must be a plain "
                "positional parameter, not *args, **kwargs or keyword-only"
            )
        log.debug("entrypoint: %s", name)
        self._entrypoint = func
        self._takes_input = bool(params)
        return func

    def context(self) -> Any:
        """The session's context (the ``ctx`` its client gave, or the last
        :meth:`update_context`), or None when the session has none."""
        if self._object_ref is None:
            return None
        return loads(get_object(self._object_ref))

    def update_context(self, data: Any) -> None:
        """Replace the session's context with ``data`` in the object cache.

        Every instance of the session and the client's ``Session.context()`` see
        the new value.  In a session created without a context there is nowhere to
        store it: the call is ignored (as in Flame's SDK) and a warning logged.
        """
        if self._object_ref is None:
            log.warning("update_context ignored: the session was created without a context")
            return
        self._object_ref = update_object(self._object_ref, dumps(data))

    def run(self) -> None:
        """Serve this instance until the executor stops it (flmrun's ``run``).

        The process must have been started by an executor manager, which sets
        ``FLAME_INSTANCE_ENDPOINT``.  Raises FlameUsageError when no entrypoint is
        set or flmrun is not installed.
        """
        if self._entrypoint is None:
            raise FlameUsageError(
                "FlameInstance.run(): no entrypoint; decorate a function with "
                "@instance.entrypoint first"
            )
        _require_flmrun()
        from flmrun._server import configure_logging, run

        if not logging.getLogger().handlers:
            configure_logging()
        name = getattr(self._entrypoint, "__qualname__", repr(self._entrypoint))
        log.info("starting the Flame instance (entrypoint %s)", name)
        run(self.as_service())

    def as_service(self) -> flmrun.FlameService:
        """This instance as a :class:`flmrun.FlameService` (for ``flmrun.serve``)."""
        _require_flmrun()
        import flmrun

        instance = self

        class _FlameInstanceService(flmrun.FlameService):
            def on_session_enter(self, context: flmrun.SessionContext) -> None:
                instance.on_session_enter(context)

            def on_task_invoke(self, context: flmrun.TaskContext) -> bytes | None:
                return instance.on_task_invoke(context)

            def on_session_leave(self) -> None:
                instance.on_session_leave()

        return _FlameInstanceService()

    # -- the service hooks (FlameService's names) -----------------------------------

    def on_session_enter(self, context: _SessionContext) -> None:
        common_data: Any = context.common_data
        if callable(common_data):  # 0.6's method; a plain attribute is accepted too
            common_data = common_data()
        self._object_ref = None if common_data is None else ObjectRef.decode(common_data)

    def on_task_invoke(self, context: _TaskContext) -> bytes | None:
        func = self._entrypoint
        if func is None:
            raise FlameUsageError("no entrypoint: decorate a function with @instance.entrypoint")
        args = (None if context.input is None else loads(context.input),)
        result = func(*args[: int(self._takes_input)])
        if inspect.isawaitable(result):
            result = self._event_loop().run_until_complete(_awaited(result))
        return None if result is None else dumps(result)

    def on_session_leave(self) -> None:
        self._object_ref = None

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _require_flmrun() -> None:
    """flmrun is there, or an ImportError says what to install (as for the other
    service-author names: ``flamepy.core.service.load``)."""
    from flamepy.core.service import load

    load("FlameService")
