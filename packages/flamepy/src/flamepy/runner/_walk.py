"""Finding and replacing values of one kind inside argument containers.

The client replaces futures among a call's arguments by their ObjectRefs, and
flmrun replaces those ObjectRefs by the objects they name; both look inside
lists, tuples, sets, frozensets and dict values, to the same depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

MAX_DEPTH = 32
"""How deep into nested containers values are looked for."""


def find(value: Any, kind: type[T], found: list[T] | None = None, depth: int = 0) -> list[T]:
    """Every instance of ``kind`` in ``value`` (containers searched), in order."""
    found = [] if found is None else found
    if isinstance(value, kind):
        found.append(value)
    elif depth < MAX_DEPTH and isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            find(item, kind, found, depth + 1)
    elif depth < MAX_DEPTH and isinstance(value, dict):
        for item in value.values():
            find(item, kind, found, depth + 1)
    return found


def replace(value: Any, kind: type, by_id: Mapping[int, Any], depth: int = 0) -> Any:
    """``value`` with each instance of ``kind`` replaced by ``by_id[id(instance)]``;
    container types are kept (named tuples are left as they are)."""
    if isinstance(value, kind):
        return by_id[id(value)]
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, list):
        return [replace(v, kind, by_id, depth + 1) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(replace(v, kind, by_id, depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(replace(v, kind, by_id, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: replace(v, kind, by_id, depth + 1) for k, v in value.items()}
    return value
