"""The Runner API: run local functions, classes and objects on Flame.

``flamepy.runner.types`` holds the pickled wire types and keeps its module path;
everything else is private and re-exported here.
"""

from typing import Any

from flamepy._errors import ErrorType, RemoteError, RunnerError
from flamepy.runner._future import AsyncObjectFuture, ObjectExpr, ObjectFuture, ObjectResult
from flamepy.runner._helper import get_data
from flamepy.runner._publish import PackagePreview
from flamepy.runner._runner import (
    AsyncRunner,
    AsyncRunnerService,
    FlameAsyncRunner,
    FlameRunner,
    Runner,
    RunnerService,
)
from flamepy.runner.types import RunnerContext, RunnerRequest, SessionContext


def __getattr__(name: str) -> Any:
    if name == "FlameRunpyService":  # 0.6's name of the service flmrun runs
        import importlib

        from flamepy.core.service import load

        load("FlameService")  # flmrun is there, or an ImportError names it
        return importlib.import_module("flmrun._runpy").RunpyService
    raise AttributeError(f"module 'flamepy.runner' has no attribute {name!r}")


__all__ = [
    "AsyncObjectFuture",
    "AsyncRunner",
    "AsyncRunnerService",
    "ErrorType",
    "FlameAsyncRunner",
    "FlameRunner",
    "FlameRunpyService",
    "ObjectExpr",
    "ObjectFuture",
    "ObjectResult",
    "PackagePreview",
    "RemoteError",
    "Runner",
    "RunnerContext",
    "RunnerError",
    "RunnerRequest",
    "RunnerService",
    "SessionContext",
    "get_data",
]
