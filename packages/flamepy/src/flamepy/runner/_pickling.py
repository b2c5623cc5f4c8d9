"""Pickling execution objects for the wire, with errors that name the culprit."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import types
from typing import Any

import cloudpickle

from flamepy._errors import InvalidArgumentError
from flamepy.runner.types import CLIENT_PYTHON, PYTHON_ATTRIBUTE, RunnerContext

MAX_DEPTH = 12
CHECK_DEPTH = 3
"""How deep :func:`check_arguments` looks into containers."""
CHECK_ITEMS = 1000
"""How many items of one container :func:`check_arguments` looks at."""
LOCAL_ONLY: tuple[tuple[type, str], ...] = (
    (io.IOBase, "an open file or stream"),
    (socket.socket, "a socket"),
    (type(threading.Lock()), "a lock"),
    (type(threading.RLock()), "a lock"),
    (threading.Condition, "a condition variable"),
    (threading.Event, "an event"),
    (threading.Semaphore, "a semaphore"),
    (threading.Thread, "a thread"),
    (types.GeneratorType, "a generator"),
    (types.AsyncGeneratorType, "an async generator"),
    (types.CoroutineType, "a coroutine"),
    (asyncio.Future, "an asyncio future or task"),
)
"""Values that mean nothing in another process: an argument holding one is refused
(cloudpickle would send an open file's contents, or fail deep inside)."""


def bind_constructor(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> type:
    """A subclass of ``cls`` whose no-argument constructor passes ``args``/``kwargs`` on.

    Flame's runpy instantiates a class with no arguments; this subclass (pickled by
    value) lets constructor arguments work with it too.
    """

    base_init: Any = cls.__init__  # type: ignore[misc]

    def __init__(self: Any) -> None:
        base_init(self, *args, **kwargs)

    bound = types.new_class(cls.__name__, (cls,), {}, lambda ns: ns.update(__init__=__init__))
    bound.__qualname__ = f"{cls.__qualname__}[bound]"
    bound.__module__ = cls.__module__
    bound.__doc__ = cls.__doc__
    return bound


def _dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=cloudpickle.DEFAULT_PROTOCOL)  # type: ignore[no-any-return]


def _children(obj: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, types.FunctionType):
        out = []
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=False):
            try:
                out.append((f"{path}.<closure {name}>", cell.cell_contents))
            except ValueError:
                continue
        for name in obj.__code__.co_names:
            if name in obj.__globals__:
                out.append((f"{path}.<global {name}>", obj.__globals__[name]))
        return out
    if isinstance(obj, types.MethodType):
        return [(f"{path}.__self__", obj.__self__)]
    state = getattr(obj, "__dict__", None)
    out = [(f"{path}.{k}", v) for k, v in (state or {}).items()]
    for slot in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, slot):
            out.append((f"{path}.{slot}", getattr(obj, slot)))
    return out


def find_unpicklable(obj: Any, path: str, depth: int = 0) -> tuple[str, Exception] | None:
    """The deepest attribute path under ``obj`` that cannot be pickled, with its error."""
    try:
        _dumps(obj)
        return None
    except Exception as exc:
        error = exc
    if depth < MAX_DEPTH and not isinstance(obj, type):
        for child_path, child in _children(obj, path):
            found = find_unpicklable(child, child_path, depth + 1)
            if found is not None:
                return found
    return path, error


def pickle_context(context: RunnerContext, original: Any) -> bytes:
    """cloudpickle the context, or fail naming the attribute that cannot be pickled."""
    setattr(context, PYTHON_ATTRIBUTE, CLIENT_PYTHON)
    try:
        return _dumps(context)
    except Exception as exc:
        label = getattr(original, "__name__", None) or type(original).__name__
        found = find_unpicklable(original, label)
        where, cause = found if found is not None else (label, exc)
        raise InvalidArgumentError(
            f"cannot send {label} to Flame: {where} cannot be pickled "
            f"({type(cause).__name__}: {cause}); create such resources inside the methods "
            "that use them, or give the class __getstate__/__setstate__"
        ) from exc


_LOCAL_TYPES = tuple(kind for kind, _ in LOCAL_ONLY)
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def _check(value: Any, path: str, depth: int) -> None:
    if type(value) in _PLAIN:
        return
    if isinstance(value, _LOCAL_TYPES):
        what = next(w for kind, w in LOCAL_ONLY if isinstance(value, kind))
        raise InvalidArgumentError(
            f"argument {path} is {what} ({type(value).__name__}), which means nothing in "
            "another process; pass what it holds instead (the data, a path, a URL), or "
            "create it inside the remote function"
        )
    if depth >= CHECK_DEPTH:
        return
    if isinstance(value, dict):
        for i, (key, item) in enumerate(value.items()):
            if i >= CHECK_ITEMS:
                return
            _check(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            if i >= CHECK_ITEMS:
                return
            _check(item, f"{path}[{i}]", depth + 1)


def check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse arguments that cannot mean anything remotely, naming the argument."""
    for i, value in enumerate(args):
        _check(value, f"args[{i}]", 0)
    for name, value in kwargs.items():
        _check(value, name, 0)
