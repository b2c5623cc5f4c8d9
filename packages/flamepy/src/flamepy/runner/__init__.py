"""The Runner API: run local functions, classes and objects on Flame.

``flamepy.runner.types`` holds the pickled wire types and keeps its module path;
everything else is private and re-exported here.
"""

from flamepy._errors import RemoteError
from flamepy.runner._future import AsyncObjectFuture, ObjectExpr, ObjectFuture, ObjectResult
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

__all__ = [
    "AsyncObjectFuture",
    "AsyncRunner",
    "AsyncRunnerService",
    "FlameAsyncRunner",
    "FlameRunner",
    "ObjectExpr",
    "ObjectFuture",
    "ObjectResult",
    "PackagePreview",
    "RemoteError",
    "Runner",
    "RunnerContext",
    "RunnerRequest",
    "RunnerService",
    "SessionContext",
]
