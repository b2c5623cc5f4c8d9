"""flmrun: the Flame instance process.

An executor manager launches one instance process per binding; the process serves the
``flame.v1.Instance`` gRPC service on the Unix socket named by ``FLAME_INSTANCE_ENDPOINT``
and forwards the calls to a :class:`FlameService`::

    import flmrun

    class Echo(flmrun.FlameService):
        def on_task_invoke(self, context: flmrun.TaskContext) -> bytes | None:
            return context.input

    if __name__ == "__main__":
        flmrun.run(Echo)

or, without a script, ``python -m flmrun --service mymodule:Echo``.

Importing this package is cheap: grpc is only imported when :func:`run` or :func:`serve`
is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flmrun._errors import FlmrunError, InstanceConfigError, ServiceLoadError
from flmrun._service import ApplicationContext, FlameService, SessionContext, TaskContext

if TYPE_CHECKING:
    from flmrun._server import run, serve

__version__ = "0.1.0"

__all__ = [
    "ApplicationContext",
    "FlameService",
    "FlmrunError",
    "InstanceConfigError",
    "ServiceLoadError",
    "SessionContext",
    "TaskContext",
    "__version__",
    "run",
    "serve",
]

_LAZY = frozenset({"run", "serve"})


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from flmrun import _server

        value: object = getattr(_server, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
