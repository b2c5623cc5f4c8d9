"""Python SDK for Flame: the session-manager client, configuration and errors.

The names and signatures follow Flame's own Python SDK (0.6), so code written for
it runs unchanged; ``tests/test_public_api.py`` pins ``__all__``.
"""

from flamepy._async_client import AsyncConnection, AsyncSession
from flamepy._client import (
    Connection,
    Session,
    TaskFuture,
    TaskWatcher,
    close_session,
    connect,
    create_session,
    get_application,
    get_session,
    list_applications,
    list_executors,
    list_nodes,
    list_sessions,
    open_session,
    register_application,
    unregister_application,
)
from flamepy._config import (
    DEFAULT_FLAME_CACHE_ENDPOINT,
    DEFAULT_FLAME_CONF,
    DEFAULT_FLAME_ENDPOINT,
    FlameClientTls,
    FlameContext,
    FlameContextRunner,
    FlamePackage,
)
from flamepy._errors import (
    AlreadyExistsError,
    ConfigError,
    ConfigWarning,
    ConnectionFailedError,
    FlameError,
    FlameErrorCode,
    FlameRuntimeError,
    FlameTimeoutError,
    FlameUsageError,
    InternalError,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
    TaskCancelledError,
    TaskError,
    TaskFailedError,
)
from flamepy._types import (
    Application,
    ApplicationAttributes,
    ApplicationID,
    ApplicationSchema,
    ApplicationState,
    CommonData,
    Event,
    Executor,
    ExecutorState,
    Message,
    Node,
    NodeState,
    ResourceRequirement,
    SessionAttributes,
    SessionID,
    SessionState,
    Shim,
    Task,
    TaskID,
    TaskInformer,
    TaskInput,
    TaskOutput,
    TaskState,
)
from flamepy.core.cache import (
    ObjectRef,
    delete_objects,
    download_object,
    get_object,
    patch_object,
    put_object,
    update_object,
    upload_object,
)
from flamepy.core.service import FLAME_INSTANCE_ENDPOINT, SERVICE_NAMES
from flamepy.runner import (
    AsyncRunner,
    FlameAsyncRunner,
    FlameRunner,
    ObjectExpr,
    ObjectFuture,
    ObjectResult,
    RemoteError,
    Runner,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_FLAME_CACHE_ENDPOINT",
    "DEFAULT_FLAME_CONF",
    "DEFAULT_FLAME_ENDPOINT",
    "FLAME_INSTANCE_ENDPOINT",
    "AlreadyExistsError",
    "Application",
    "ApplicationAttributes",
    "ApplicationContext",
    "ApplicationID",
    "ApplicationSchema",
    "ApplicationState",
    "AsyncConnection",
    "AsyncRunner",
    "AsyncSession",
    "CommonData",
    "ConfigError",
    "ConfigWarning",
    "Connection",
    "ConnectionFailedError",
    "Event",
    "Executor",
    "ExecutorState",
    "FlameAsyncRunner",
    "FlameClientTls",
    "FlameContext",
    "FlameContextRunner",
    "FlameError",
    "FlameErrorCode",
    "FlamePackage",
    "FlameRunner",
    "FlameRuntimeError",
    "FlameService",
    "FlameTimeoutError",
    "FlameUsageError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidStateError",
    "Message",
    "Node",
    "NodeState",
    "NotFoundError",
    "ObjectExpr",
    "ObjectFuture",
    "ObjectRef",
    "ObjectResult",
    "RemoteError",
    "ResourceRequirement",
    "Runner",
    "Session",
    "SessionAttributes",
    "SessionContext",
    "SessionID",
    "SessionState",
    "Shim",
    "Task",
    "TaskCancelledError",
    "TaskContext",
    "TaskError",
    "TaskFailedError",
    "TaskFuture",
    "TaskID",
    "TaskInformer",
    "TaskInput",
    "TaskOutput",
    "TaskState",
    "TaskWatcher",
    "__version__",
    "close_session",
    "connect",
    "create_session",
    "delete_objects",
    "download_object",
    "get_application",
    "get_object",
    "get_session",
    "list_applications",
    "list_executors",
    "list_nodes",
    "list_sessions",
    "open_session",
    "patch_object",
    "put_object",
    "register_application",
    "run",
    "runner",
    "service",
    "unregister_application",
    "update_object",
    "upload_object",
    "util",
]


SUBMODULES = ("runner", "service", "util")


def __getattr__(name: str) -> object:
    """The service-author names (``FlameService``, the contexts, ``run``) load from
    flmrun when first used: see :mod:`flamepy.core.service`."""
    if name in SERVICE_NAMES:
        from flamepy.core.service import load

        return load(name)
    if name in SUBMODULES:  # as 0.6, whose __init__ imports them
        import importlib

        return importlib.import_module(f"flamepy.{name}")
    raise AttributeError(f"module 'flamepy' has no attribute {name!r}")
