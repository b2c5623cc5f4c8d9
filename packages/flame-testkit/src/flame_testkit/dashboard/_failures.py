"""The remote traceback of a failed Runner call, read without running its code.

A failed call's task output is ``FLME`` + a pickle of ``(exception, type name,
message, traceback text)`` (``flmrun._runpy.error_output``).  The exception object
belongs to the user's code, which the cluster does not import and must never run,
so the pickle is read by an unpickler that builds inert stand-ins for every class
and function it names: only strings, numbers and containers come out as
themselves.  A batch task's output (``FLMB``) holds a list of per-call outputs.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

from flamepy.runner.types import BATCH_RESULT_MAGIC, ERROR_RESULT_MAGIC

MAX_TEXT = 64 * 1024
"""Characters of a traceback shown, at most (its end: the raise site)."""


class _Inert:
    """What every global in the pickle becomes: calling it, or building or setting
    state on what it returns, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Inert()

    def persistent_load(self, pid: Any) -> Any:
        return None


@dataclass(frozen=True)
class Failure:
    type_name: str
    message: str
    traceback: str


def _read(payload: bytes) -> Any:
    try:
        return _SafeUnpickler(io.BytesIO(payload)).load()
    except Exception:
        return None


def failure_of(output: bytes | None) -> Failure | None:
    """The failure a Runner task's output carries (the first, for a batch), if any."""
    if not output:
        return None
    if output.startswith(BATCH_RESULT_MAGIC):
        if ERROR_RESULT_MAGIC not in output:
            return None  # no failed call in it: nothing to unpickle (the usual case)
        outputs = _read(output[len(BATCH_RESULT_MAGIC) :])
        if isinstance(outputs, list):
            for each in outputs:
                if isinstance(each, bytes) and each.startswith(ERROR_RESULT_MAGIC):
                    return failure_of(each)
        return None
    if not output.startswith(ERROR_RESULT_MAGIC):
        return None
    value = _read(output[len(ERROR_RESULT_MAGIC) :])
    if not (isinstance(value, tuple) and len(value) == 4):
        return None
    _, type_name, message, text = value
    if not (isinstance(type_name, str) and isinstance(message, str) and isinstance(text, str)):
        return None
    return Failure(type_name, message, text[-MAX_TEXT:])
