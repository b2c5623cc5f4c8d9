"""Every exception flamepy raises.

The hierarchy::

    FlameError                      base of everything; carries ``code`` and ``message``
    ├── FlameUsageError             the caller must change something (input, config)
    │   ├── ConfigError             flame.yaml or FLAME_* variables are malformed or missing
    │   │                           (or lack the access token a local cluster asked for)
    │   └── InvalidArgumentError    a request was rejected as invalid (client or server side);
    │                               also a ``ValueError``, which Flame's SDK 0.6 raised
    └── FlameRuntimeError           the request was fine but something failed while serving it
        ├── NotFoundError           the named application, session or task does not exist
        ├── AlreadyExistsError      the name is taken
        ├── InvalidStateError       the object is in the wrong state (a closed session, ...)
        ├── ConnectionFailedError   an endpoint could not be reached in time
        ├── FlameTimeoutError       a wait ran out of time (also a builtin ``TimeoutError``)
        ├── TaskError               a task ended without success
        │   ├── TaskFailedError     the task ended Failed; ``message`` is the server's text
        │   │   └── RemoteError     a Runner call raised an exception that cannot be
        │   │                       re-raised here as its own type (``type_name`` names it)
        │   └── TaskCancelledError  the task ended Cancelled (its session was closed)
        ├── RunnerError             ``flamepy.runner.get_data`` could not read a task's
        │                           data (``error_type``: an ``ErrorType``, as in 0.6)
        └── InternalError           the server reported an internal or unknown failure

    ConfigWarning (UserWarning)     flamepy goes on, but says so: an unknown flame.yaml
                                    key, the embedded local cluster standing in

``FlameError(code, message)`` keeps the constructor of Flame's own SDK, and
``FlameErrorCode`` keeps its six values, so ``except FlameError as e: e.code`` code
written for it works unchanged.  gRPC status codes are translated in exactly one
place, :func:`from_rpc_error`, at the client boundary.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class FlameErrorCode(enum.IntEnum):
    """Error categories; the first six values match Flame's own SDK."""

    INVALID_CONFIG = 0
    INVALID_STATE = 1
    INVALID_ARGUMENT = 2
    INTERNAL = 3
    ALREADY_EXISTS = 4
    NOT_FOUND = 5
    UNAVAILABLE = 6
    TIMEOUT = 7
    CANCELLED = 8


class ConfigWarning(UserWarning):
    """Something about the configuration that flamepy goes on with, and says so (an
    unknown key in flame.yaml, no endpoint so the embedded local cluster is used)."""


class FlameError(Exception):
    """Base class of all flamepy errors."""

    default_code: FlameErrorCode = FlameErrorCode.INTERNAL

    def __init__(self, code: FlameErrorCode | None = None, message: str = "") -> None:
        self.code = self.default_code if code is None else code
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keep errors picklable across processes whatever the subclass signature.
        return (_rebuild, (type(self), self.code, self.message, dict(self.__dict__)))


def _rebuild(
    cls: type[FlameError], code: FlameErrorCode, message: str, state: dict[str, object]
) -> FlameError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.code = code
    err.message = message
    return err


class FlameUsageError(FlameError):
    """The caller has to change something: an argument, a file or a variable."""

    default_code = FlameErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, code: FlameErrorCode | None = None) -> None:
        super().__init__(code, message)


class ConfigError(FlameUsageError):
    """flame.yaml or a FLAME_* environment variable is malformed or missing."""

    default_code = FlameErrorCode.INVALID_CONFIG


class InvalidArgumentError(FlameUsageError, ValueError):
    """A request was rejected as invalid, by this client or by the server."""


class FlameRuntimeError(FlameError):
    """The request was well formed but serving it failed."""

    def __init__(self, message: str, code: FlameErrorCode | None = None) -> None:
        super().__init__(code, message)


class ErrorType(enum.Enum):
    """Why :class:`RunnerError` was raised (Flame SDK 0.6's values)."""

    DECODE_ERROR = "decode_error"
    CACHE_RETRIEVAL_ERROR = "cache_retrieval_error"
    DATA_FORMAT_ERROR = "data_format_error"


class RunnerError(FlameRuntimeError):
    """A Runner task's data could not be read (``flamepy.runner.get_data``).

    As in Flame's SDK 0.6: ``RunnerError(error_type, message, cause=None, key=None,
    data_type=None)``, and ``str()`` starts with ``[<error_type>]``."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        cause: Exception | None = None,
        key: str | None = None,
        data_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.cause = cause
        self.key = key
        self.data_type = data_type

    def __str__(self) -> str:
        return f"[{self.error_type.value}] {self.message}"


class NotFoundError(FlameRuntimeError):
    default_code = FlameErrorCode.NOT_FOUND


class AlreadyExistsError(FlameRuntimeError):
    default_code = FlameErrorCode.ALREADY_EXISTS


class InvalidStateError(FlameRuntimeError):
    default_code = FlameErrorCode.INVALID_STATE


class ConnectionFailedError(FlameRuntimeError):
    """An endpoint could not be reached within the connect timeout."""

    default_code = FlameErrorCode.UNAVAILABLE


class FlameTimeoutError(FlameRuntimeError, TimeoutError):
    """A wait ran out of time.  Also a builtin ``TimeoutError``."""

    default_code = FlameErrorCode.TIMEOUT


class InternalError(FlameRuntimeError):
    default_code = FlameErrorCode.INTERNAL


class TaskError(FlameRuntimeError):
    """A task ended without success."""

    def __init__(
        self,
        message: str,
        *,
        session_id: str = "",
        task_id: str = "",
        code: FlameErrorCode | None = None,
    ) -> None:
        super().__init__(message, code)
        self.session_id = session_id
        self.task_id = task_id


class TaskFailedError(TaskError):
    """The task ended Failed; ``message`` is the failure text the server recorded."""

    default_code = FlameErrorCode.INTERNAL


class RemoteError(TaskFailedError):
    """A remote Runner call raised an exception that cannot be re-raised as itself.

    ``type_name`` is the remote exception's qualified type name and
    ``remote_traceback`` its formatted traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of a re-raised remote exception: its remote traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\n--- remote traceback ---\n{self.text}"


class TaskCancelledError(TaskError):
    """The task ended Cancelled, because its session was closed before it ran."""

    default_code = FlameErrorCode.CANCELLED


_STATUS_TO_ERROR: dict[str, type[FlameError]] = {
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "INVALID_ARGUMENT": InvalidArgumentError,
    "FAILED_PRECONDITION": InvalidStateError,
    "UNAVAILABLE": ConnectionFailedError,
    "DEADLINE_EXCEEDED": FlameTimeoutError,
    # A local cluster on TCP refuses calls without its access token: the fix is the
    # client's configuration (FLAME_TOKEN_FILE), so a usage error.
    # A request over the 4 MiB message limit: the caller must send less.
    "RESOURCE_EXHAUSTED": InvalidArgumentError,
    "OUT_OF_RANGE": InvalidArgumentError,
    "UNAUTHENTICATED": ConfigError,
    "PERMISSION_DENIED": ConfigError,
}


def from_rpc_error(err: grpc.RpcError, what: str = "") -> FlameError:
    """Translate a gRPC error into the matching :class:`FlameError`.

    The server's own status message is kept verbatim; ``what`` names the call
    (``"GetSession(s1)"``) and is prefixed when given.
    """
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else None
    text = details or str(err)
    message = f"{what}: {text}" if what else text
    name = code.name if code is not None else "UNKNOWN"
    cls = _STATUS_TO_ERROR.get(name, InternalError)
    return cls(message)  # type: ignore[arg-type]


def from_result(return_code: int, message: str | None, what: str) -> FlameError:
    """Translate a ``Result{return_code != 0}`` into an error.

    The session manager reports storage failures such as a duplicate application
    name this way, so the text is inspected for the one case we can name.
    """
    text = message or f"return code {return_code}"
    lowered = text.lower()
    full = f"{what}: {text}"
    if "already exist" in lowered or "unique constraint" in lowered or "duplicate" in lowered:
        return AlreadyExistsError(full)
    if "not found" in lowered:
        return NotFoundError(full)
    if "invalid" in lowered:
        return InvalidArgumentError(full)
    return InternalError(full)


__all__ = [
    "AlreadyExistsError",
    "ConfigError",
    "ConfigWarning",
    "ConnectionFailedError",
    "ErrorType",
    "FlameError",
    "FlameErrorCode",
    "FlameRuntimeError",
    "FlameTimeoutError",
    "FlameUsageError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidStateError",
    "NotFoundError",
    "RemoteError",
    "RemoteTraceback",
    "RunnerError",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "from_result",
    "from_rpc_error",
]
