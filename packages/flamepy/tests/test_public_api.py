"""Pin flamepy's public API: its names, and the signatures Flame's own SDK uses."""

from __future__ import annotations

import inspect

import flamepy

EXPECTED = {
    "DEFAULT_FLAME_CACHE_ENDPOINT", "DEFAULT_FLAME_CONF", "DEFAULT_FLAME_ENDPOINT",
    "AlreadyExistsError", "Application", "ApplicationAttributes", "ApplicationID",
    "ApplicationSchema", "ApplicationState", "AsyncConnection", "AsyncSession", "CommonData",
    "ConfigError", "ConfigWarning", "Connection", "ConnectionFailedError", "Event", "Executor",
    "ExecutorState",
    "FlameClientTls", "FlameContext", "FlameContextRunner", "FlameError", "FlameErrorCode",
    "FlamePackage", "FlameRuntimeError", "FlameTimeoutError", "FlameUsageError", "InternalError",
    "InvalidArgumentError", "InvalidStateError", "Message", "Node", "NodeState", "NotFoundError",
    "ResourceRequirement", "Session", "SessionAttributes", "SessionID", "SessionState", "Shim",
    "Task", "TaskCancelledError", "TaskError", "TaskFailedError", "TaskFuture", "TaskID",
    "TaskInput", "TaskOutput", "TaskState", "TaskWatcher", "__version__", "close_session",
    "connect", "create_session", "get_application", "get_session", "list_applications",
    "list_executors", "list_nodes", "list_sessions", "open_session", "register_application",
    "unregister_application", "ObjectRef", "delete_objects", "download_object", "get_object",
    "patch_object", "put_object", "update_object", "upload_object", "AsyncRunner",
    "FlameAsyncRunner", "FlameRunner", "ObjectExpr", "ObjectFuture", "ObjectResult",
    "RemoteError", "Runner",
    # the service-author API, loaded from flmrun when used (issue 22)
    "FLAME_INSTANCE_ENDPOINT", "ApplicationContext", "FlameService", "SessionContext",
    "TaskContext", "TaskInformer", "run", "runner", "service", "util",
}  # fmt: skip

# Signatures of Flame's own SDK (0.6) that user code calls.
SIGNATURES = {
    "create_session": [
        "application", "common_data", "session_id", "min_instances", "max_instances",
        "batch_size", "resreq",
    ],
    "open_session": ["session_id", "spec"],
    "close_session": ["session_id"],
    "get_session": ["session_id"],
    "register_application": ["name", "app_attrs"],
    "unregister_application": ["name"],
    "get_application": ["name"],
    "connect": ["addr", "tls_config"],
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(flamepy.__all__) == EXPECTED
    for name in flamepy.__all__:
        assert hasattr(flamepy, name), name


def test_sdk_signatures() -> None:
    for name, params in SIGNATURES.items():
        assert list(inspect.signature(getattr(flamepy, name)).parameters) == params, name
    create = inspect.signature(flamepy.create_session).parameters
    assert create["min_instances"].default == 0 and create["batch_size"].default == 1
    session_methods = {
        "create_task",
        "get_task",
        "list_tasks",
        "watch_task",
        "invoke",
        "run",
        "close",
    }
    assert session_methods <= set(dir(flamepy.Session))


def test_enums_keep_sdk_values_and_add_cancelled() -> None:
    assert [(s.name, s.value) for s in flamepy.TaskState] == [
        ("PENDING", 0), ("RUNNING", 1), ("SUCCEED", 2), ("FAILED", 3), ("CANCELLED", 4),
    ]  # fmt: skip
    codes = {c.name: c.value for c in flamepy.FlameErrorCode}
    assert {k: codes[k] for k in ("INVALID_CONFIG", "INVALID_STATE", "INVALID_ARGUMENT",
            "INTERNAL", "ALREADY_EXISTS", "NOT_FOUND")} == {
        "INVALID_CONFIG": 0, "INVALID_STATE": 1, "INVALID_ARGUMENT": 2,
        "INTERNAL": 3, "ALREADY_EXISTS": 4, "NOT_FOUND": 5,
    }  # fmt: skip


def test_core_compat_path_reexports() -> None:
    import flamepy.core

    assert flamepy.core.FlameError is flamepy.FlameError
    assert flamepy.core.create_session is flamepy.create_session


RUNNER_PUBLIC = {
    "ErrorType", "FlameRunpyService", "RunnerError", "get_data",
    "AsyncObjectFuture", "AsyncRunner", "AsyncRunnerService", "FlameAsyncRunner",
    "FlameRunner", "ObjectExpr", "ObjectFuture", "ObjectResult", "PackagePreview",
    "RemoteError", "Runner", "RunnerContext", "RunnerRequest", "RunnerService",
    "SessionContext",
}  # fmt: skip


def test_runner_public_api_is_pinned() -> None:
    import flamepy.runner

    assert set(flamepy.runner.__all__) == RUNNER_PUBLIC
    for name in RUNNER_PUBLIC:
        assert getattr(flamepy.runner, name) is not None
