"""Pickling values for the wire: the standard pickle where it gives the same result.

cloudpickle pickles functions and classes of ``__main__`` (and of modules
registered with ``register_pickle_by_value``) by value, which the standard
pickle cannot do, but it is several times slower even for an integer.  The
values of most calls are plain data: builtin scalars in builtin containers,
and a few of flamepy's own wire classes.  For those the standard pickle makes
a pickle any ``cloudpickle.loads`` (which is ``pickle.loads``) reads the same
way; everything else goes through cloudpickle.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cloudpickle

PROTOCOL = cloudpickle.DEFAULT_PROTOCOL
MAX_ITEMS = 4096
"""Values looked at before giving up and using cloudpickle."""
MAX_DEPTH = 8

_SCALARS = frozenset({int, float, complex, bool, str, bytes, type(None)})
_CONTAINERS = frozenset({list, tuple, set, frozenset})
_WIRE_CLASSES: set[type] = set()


def register_wire_class(cls: type) -> type:
    """Mark a class importable on every Flame node (by module path): its instances
    are plain when their attributes are."""
    _WIRE_CLASSES.add(cls)
    return cls


def _plain(obj: Any, budget: list[int], depth: int) -> bool:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        return False
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if kind in _CONTAINERS:
        return all(_plain(item, budget, depth + 1) for item in obj)
    if kind is dict:
        return all(
            _plain(k, budget, depth + 1) and _plain(v, budget, depth + 1) for k, v in obj.items()
        )
    if kind in _WIRE_CLASSES:
        return all(_plain(v, budget, depth + 1) for v in vars(obj).values())
    return False


def is_plain(obj: Any) -> bool:
    """Whether ``obj`` is builtin data (and wire classes) all the way down."""
    return _plain(obj, [MAX_ITEMS], 0)


def dumps(obj: Any) -> bytes:
    """``obj`` pickled: with the standard pickle when it is plain, else cloudpickle."""
    return dumps_as(obj, is_plain(obj))


def dumps_as(obj: Any, plain: bool) -> bytes:
    """``obj`` pickled, when whether it :func:`is_plain` is already known."""
    if plain:
        return pickle.dumps(obj, protocol=PROTOCOL)
    return cloudpickle.dumps(obj, protocol=PROTOCOL)  # type: ignore[no-any-return]


def dumps_after(prefix: bytes, obj: Any) -> memoryview:
    """``prefix`` + ``obj`` pickled (as :func:`dumps`), written once into one buffer:
    a large ``bytes`` inside ``obj`` is copied once, not again to add the prefix."""
    sink = io.BytesIO()
    sink.write(prefix)
    pickler = pickle.Pickler if is_plain(obj) else cloudpickle.Pickler
    pickler(sink, protocol=PROTOCOL).dump(obj)
    return sink.getbuffer()
