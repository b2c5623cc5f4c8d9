"""Pickling execution objects for the wire, with errors that name the culprit."""

from __future__ import annotations

import types
from typing import Any

import cloudpickle

from flamepy._errors import InvalidArgumentError
from flamepy.runner.types import RunnerContext

MAX_DEPTH = 12


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
