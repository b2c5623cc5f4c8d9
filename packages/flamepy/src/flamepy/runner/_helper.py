"""Reading a Runner task's input or output, as Flame SDK 0.6's ``get_data`` does.

``get_data(task.input)`` gives ``{"type": "input", "method", "args", "kwargs",
"metadata"}`` with every ObjectRef argument resolved from the cache;
``get_data(task.output)`` gives ``{"type": "output", "result", "metadata"}``.  It
reads what this SDK's Runner writes (inline results, results in the cache,
batched calls, failed calls) as well as 0.6's formats (a pickle, or an encoded
ObjectRef).  Failures are :class:`~flamepy.RunnerError` with an ``ErrorType``.
"""

from __future__ import annotations

import pickle
from typing import Any

from flamepy._cache.codec import unpickle
from flamepy._errors import ErrorType, RunnerError
from flamepy.core.cache import ObjectRef, get_object
from flamepy.runner._calls import decode_output
from flamepy.runner._walk import find, replace
from flamepy.runner.types import (
    BATCH_ATTRIBUTE,
    BATCH_RESULT_MAGIC,
    ERROR_RESULT_MAGIC,
    INLINE_RESULT_MAGIC,
    RunnerRequest,
)


def _fetch(ref: ObjectRef) -> Any:
    try:
        value = get_object(ref)
    except Exception as exc:
        raise RunnerError(
            ErrorType.CACHE_RETRIEVAL_ERROR,
            f"cannot read {ref.key} from the object cache: {exc}",
            cause=exc,
            key=ref.key,
        ) from exc
    if isinstance(value, (bytes, bytearray)):
        try:
            return unpickle(value)
        except Exception:
            return value
    return value


def _resolve(value: Any) -> Any:
    refs = find(value, ObjectRef)
    return replace(value, ObjectRef, {id(ref): _fetch(ref) for ref in refs}) if refs else value


def _input(request: RunnerRequest, metadata: dict[str, Any]) -> dict[str, Any]:
    batch = getattr(request, BATCH_ATTRIBUTE, None)
    if batch:
        metadata = {**metadata, "batched_calls": len(batch) + 1}
    return {
        "type": "input",
        "method": request.method,
        "args": None if request.args is None else tuple(_resolve(a) for a in request.args),
        "kwargs": None
        if request.kwargs is None
        else {k: _resolve(v) for k, v in request.kwargs.items()},
        "metadata": metadata,
    }


def _output(result: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"type": "output", "result": result, "metadata": metadata}


def get_data(data: bytes) -> dict[str, Any]:
    """The call a task input stands for, or the result a task output holds."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RunnerError(
            ErrorType.DATA_FORMAT_ERROR,
            f"get_data takes a task's input or output bytes, not {type(data).__name__}",
            data_type=type(data).__name__,
        )
    raw = bytes(data)
    head = raw[:4]
    try:
        if head == INLINE_RESULT_MAGIC:
            return _output(decode_output(raw).value, {"inline": True})
        if head == ERROR_RESULT_MAGIC:
            return _output(pickle.loads(raw[4:]), {"failed": True})
        if head == BATCH_RESULT_MAGIC:
            outputs = pickle.loads(raw[4:])
            return _output([get_data(o)["result"] for o in outputs], {"batch": len(outputs)})
        if raw[:1] == b"\x80":  # a pickle: a RunnerRequest, or 0.6's direct result
            value = unpickle(raw)
            if isinstance(value, RunnerRequest):
                return _input(value, {})
            return _output(value, {})
    except RunnerError:
        raise
    except Exception as exc:
        raise RunnerError(
            ErrorType.DECODE_ERROR, f"cannot decode the task data: {exc}", cause=exc
        ) from exc
    try:
        ref = ObjectRef.decode(raw)
    except Exception as exc:
        raise RunnerError(
            ErrorType.DECODE_ERROR,
            f"the data is neither a pickle, a Runner result nor an encoded ObjectRef: {exc}",
            cause=exc,
        ) from exc
    value = _fetch(ref)
    metadata = {"object_ref_key": ref.key}
    if isinstance(value, RunnerRequest):
        return _input(value, metadata)
    return _output(value, metadata)


__all__ = ["get_data"]
