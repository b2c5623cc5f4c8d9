"""Runner payload types.  This module path is part of the wire format.

Runner sessions and tasks carry cloudpickled instances of
``flamepy.runner.types.RunnerContext`` and ``flamepy.runner.types.RunnerRequest``
(flame-runner-wire.md §2, §3, §7); both ends check ``isinstance`` against their
own class, so the module path, class names and attribute names must stay exactly
as they are.  Extra attributes are ignored by Flame's own runpy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from flamepy._errors import InvalidArgumentError
from flamepy._pickle import register_wire_class

INLINE_RESULT_MAGIC = b"FLMI"
"""Prefix of a task output that carries the result inline instead of a BSON ObjectRef.

BSON documents start with their int32 length; this prefix would mean >1 GiB, which
no ObjectRef is, so the two can never be confused."""
ERROR_RESULT_MAGIC = b"FLME"
REBUILD_EXCEPTION = "flame:rebuild-exception"
"""In an ``FLME`` output, ``(REBUILD_EXCEPTION, type, args, attributes)`` stands for an
exception that does not unpickle as itself; the client rebuilds it without calling
its constructor."""
"""Prefix of a Failed task's output that carries the pickled remote exception."""
BATCH_RESULT_MAGIC = b"FLMB"
"""Prefix of the output of a batch task: pickle(list of per-call outputs)."""
INLINE_ATTRIBUTE = "flame_inline_limit"
"""Extra RunnerRequest attribute offering inline results up to that many bytes;
Flame's own runpy ignores it."""
BATCH_ATTRIBUTE = "flame_batch"
"""Extra RunnerRequest attribute: the further calls (pickled RunnerRequests) of a
batch task.  Flame's own runpy ignores it and runs the first call only."""

MAX_SESSION_ID = 128
"""The longest session id a SessionContext takes (as Flame's SDK 0.6)."""
PYTHON_ATTRIBUTE = "flame_python"
"""Extra attribute of the pickled RunnerContext and of every RunnerRequest: the
client's Python ``major.minor``.  flmrun refuses code pickled by value by another
Python version; Flame's own runpy ignores it."""
OUTPUT_ATTRIBUTE = "flame_output"
"""Extra attribute of the pickled RunnerContext: the cache key of the session's
output directory, where flmrun sends what the session's code prints and logs
(``flamepy.runner._output``); absent when the client asked for no output.  Flame's
own runpy ignores it."""
CLIENT_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def is_function(obj: Any) -> bool:
    """Callable and not a class: functions, and instances that define ``__call__``."""
    return callable(obj) and not isinstance(obj, type)


@dataclass
class RunnerContext:
    """What a Runner session runs: the execution object and its scaling flags."""

    execution_object: Any
    stateful: bool | None = None
    autoscale: bool | None = None
    warmup: int = 0
    min_instances: int = field(init=False, default=0)
    max_instances: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        obj = self.execution_object
        instance = not is_function(obj) and not isinstance(obj, type)
        if instance:
            if self.autoscale:  # as Flame's SDK 0.6: an object lives on one instance
                raise InvalidArgumentError(
                    f"an object instance ({type(obj).__name__}) runs on one instance and "
                    "cannot autoscale; pass its class to scale out, or drop autoscale=True"
                )
            self.autoscale = False
        elif self.autoscale is None:
            self.autoscale = True
        if self.stateful is None:
            # An object, or a class kept on one instance, has state: it is saved to the
            # cache between calls, so a new instance (after a release, S4) goes on from
            # it instead of from a fresh object.  Functions and autoscaled classes stay
            # elastic.
            self.stateful = instance or (isinstance(obj, type) and not self.autoscale)
        if self.warmup < 0:
            raise InvalidArgumentError(f"warmup must not be negative, got {self.warmup}")
        if instance and self.warmup > 1:
            raise InvalidArgumentError(
                f"an object instance runs on one instance; warmup must be 0 or 1, not {self.warmup}"
            )
        if self.warmup > 0:
            self.min_instances = self.warmup
        else:
            self.min_instances = 0 if self.autoscale else 1
        self.max_instances = None if self.autoscale else self.min_instances


@register_wire_class
@dataclass
class RunnerRequest:
    """One call: ``method`` of the execution object (None: call the object itself)."""

    method: str | None = None
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.method is not None and not isinstance(self.method, str):
            raise InvalidArgumentError(
                f"RunnerRequest.method must be a str or None, not {self.method!r}"
            )
        if self.args is not None and not isinstance(self.args, (tuple, list)):
            raise InvalidArgumentError("RunnerRequest.args must be a tuple or list")
        if self.kwargs is not None and not isinstance(self.kwargs, dict):
            raise InvalidArgumentError("RunnerRequest.kwargs must be a dict")


@register_wire_class
@dataclass(frozen=True)
class BatchSlot:
    """In a batch, an argument that is the result of the batch's call ``index``."""

    index: int


@dataclass
class SessionContext:
    """Attach to an execution object to choose its session id (Flame SDK API)."""

    session_id: str | None = None
    application_name: str | None = None

    def __post_init__(self) -> None:
        """As Flame's SDK 0.6: a bad id or name is a ValueError (InvalidArgumentError)."""
        sid = self.session_id
        if sid is not None:
            if not isinstance(sid, str):
                raise InvalidArgumentError(f"session_id must be a string, got {type(sid)}")
            if not sid:
                raise InvalidArgumentError("session_id cannot be empty string")
            if len(sid) > MAX_SESSION_ID:
                raise InvalidArgumentError(
                    f"session_id too long ({len(sid)} chars, max {MAX_SESSION_ID})"
                )
        name = self.application_name
        if name is not None and not isinstance(name, str):
            raise InvalidArgumentError(f"application_name must be a string, got {type(name)}")


__all__ = [
    "BATCH_ATTRIBUTE",
    "BATCH_RESULT_MAGIC",
    "ERROR_RESULT_MAGIC",
    "INLINE_ATTRIBUTE",
    "INLINE_RESULT_MAGIC",
    "OUTPUT_ATTRIBUTE",
    "PYTHON_ATTRIBUTE",
    "BatchSlot",
    "RunnerContext",
    "RunnerRequest",
    "SessionContext",
    "is_function",
]
