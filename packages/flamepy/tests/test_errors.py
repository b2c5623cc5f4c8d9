"""The exception hierarchy and the one place gRPC codes are translated."""

from __future__ import annotations

import pickle

import grpc
import pytest

from flamepy import _errors as e


class FakeRpcError(grpc.RpcError):
    """A stand-in for a gRPC error object (only its two accessors are used)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls", "flame_code"),
    [
        (grpc.StatusCode.NOT_FOUND, e.NotFoundError, e.FlameErrorCode.NOT_FOUND),
        (grpc.StatusCode.ALREADY_EXISTS, e.AlreadyExistsError, e.FlameErrorCode.ALREADY_EXISTS),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            e.InvalidArgumentError,
            e.FlameErrorCode.INVALID_ARGUMENT,
        ),
        (grpc.StatusCode.INTERNAL, e.InternalError, e.FlameErrorCode.INTERNAL),
        (grpc.StatusCode.UNKNOWN, e.InternalError, e.FlameErrorCode.INTERNAL),
        (grpc.StatusCode.UNAVAILABLE, e.ConnectionFailedError, e.FlameErrorCode.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, e.FlameTimeoutError, e.FlameErrorCode.TIMEOUT),
    ],
)
def test_status_codes_map_to_typed_errors(
    code: grpc.StatusCode, cls: type[e.FlameError], flame_code: e.FlameErrorCode
) -> None:
    err = e.from_rpc_error(FakeRpcError(code, "server text"), "GetSession(s1)")
    assert type(err) is cls
    assert err.code == flame_code
    assert err.message == "GetSession(s1): server text"
    assert isinstance(err, e.FlameError)


def test_usage_and_runtime_errors_are_apart() -> None:
    assert issubclass(e.ConfigError, e.FlameUsageError)
    assert issubclass(e.InvalidArgumentError, e.FlameUsageError)
    for cls in (e.NotFoundError, e.TaskFailedError, e.ConnectionFailedError, e.InternalError):
        assert issubclass(cls, e.FlameRuntimeError)
        assert not issubclass(cls, e.FlameUsageError)
    assert issubclass(e.FlameTimeoutError, TimeoutError)


def test_result_codes_map_by_server_text() -> None:
    assert isinstance(e.from_result(-1, "application x already exists", "R"), e.AlreadyExistsError)
    assert isinstance(e.from_result(-1, "invalid application name", "R"), e.InvalidArgumentError)
    assert isinstance(e.from_result(-1, "application x not found", "R"), e.NotFoundError)
    other = e.from_result(-1, None, "Unregister(x)")
    assert isinstance(other, e.InternalError) and other.message == "Unregister(x): return code -1"


def test_sdk_constructor_and_pickling() -> None:
    err = e.FlameError(e.FlameErrorCode.INTERNAL, "boom")
    assert (err.code, err.message, str(err)) == (e.FlameErrorCode.INTERNAL, "boom", "boom")
    failed = e.TaskFailedError("bad", session_id="s", task_id="3")
    clone = pickle.loads(pickle.dumps(failed))
    assert type(clone) is e.TaskFailedError
    assert (clone.message, clone.session_id, clone.task_id) == ("bad", "s", "3")
