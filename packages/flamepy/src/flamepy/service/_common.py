"""What both sides of ``flamepy.service`` agree on (flame-runner-wire.md §9).

* task input and output: ``cloudpickle(value)``, raw; a ``None`` output is unset;
* ``SessionSpec.common_data``: the BSON ObjectRef (``ObjectRef.encode()``) of a
  cache object under ``<app>/<session id>`` whose value is the *bytes*
  ``cloudpickle(context)`` (so the cache stores ``FLM\\0`` + pickle of those bytes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import cloudpickle

from flamepy._errors import InvalidArgumentError
from flamepy._types import ResourceRequirement

PROTOCOL = cloudpickle.DEFAULT_PROTOCOL

_BINARY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:i|b|ib)?)?$")
_RESREQ_KEYS = frozenset({"cpu", "memory", "mem", "gpu"})


def dumps(value: Any) -> bytes:
    """A task input, a task output or a context, as the wire carries it."""
    data: bytes = cloudpickle.dumps(value, protocol=PROTOCOL)
    return data


def loads(data: bytes | bytearray | memoryview) -> Any:
    return cloudpickle.loads(data)


def parse_memory(text: str) -> int:
    """``"16g"``, ``"512Mi"``, ``"1kb"`` or ``"1024"`` in bytes; every unit is binary
    (``g`` = ``gb`` = ``gi`` = ``gib`` = 2**30), as in the resreq dict of Flame's SDK."""
    match = _MEMORY_RE.match(text.strip().lower())
    if match is None:
        raise InvalidArgumentError(
            f"invalid memory size {text!r}: use a number with an optional unit "
            "k, m, g, t or p (binary: 16g is 16 GiB)"
        )
    return int(float(match.group(1)) * _BINARY_UNITS[match.group(2) or ""])


def resource_requirement(
    resreq: ResourceRequirement | Mapping[str, Any] | None,
) -> ResourceRequirement | None:
    """``resreq`` of :class:`flamepy.service.Session`: a ResourceRequirement, or a dict
    such as ``{"cpu": 16, "memory": "64g", "gpu": 4}`` (``mem`` also names memory)."""
    if resreq is None or isinstance(resreq, ResourceRequirement):
        return resreq
    if not isinstance(resreq, Mapping):
        raise InvalidArgumentError(
            f"resreq must be a ResourceRequirement or a dict, not {type(resreq).__name__}"
        )
    unknown = sorted(str(k) for k in resreq if k not in _RESREQ_KEYS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown resource {', '.join(unknown)} in resreq: use cpu, memory (or mem) and gpu"
        )
    memory = resreq.get("memory") or resreq.get("mem") or 0
    try:
        return ResourceRequirement(
            cpu=int(resreq.get("cpu") or 0),
            memory=parse_memory(memory) if isinstance(memory, str) else int(memory),
            gpu=int(resreq.get("gpu") or 0),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"invalid resreq {dict(resreq)!r}: {exc}") from None


def check_target(name: str | None, session_id: str | None) -> None:
    if name is None and session_id is None:
        raise InvalidArgumentError(
            "give either name (to create a session of that application) "
            "or session_id (to open an existing session)"
        )
    if name is not None and session_id is not None:
        raise InvalidArgumentError(
            "name and session_id are mutually exclusive: name creates a session, "
            "session_id opens an existing one"
        )
