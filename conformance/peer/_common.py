"""Helpers shared by the peer scenarios (run by the peer python only).

A scenario reads an optional JSON document from stdin, drives the *peer* SDK
(``flamepy==0.6.0`` from PyPI, imported from the peer venv) and prints exactly one
JSON document, on the last line of stdout, describing what it observed.  Bytes
travel as hex strings.  Expected failures are recorded with :func:`attempt`;
anything else propagates, so the process exits non-zero with a traceback.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from collections.abc import Callable
from typing import Any

import flamepy


def read_input() -> dict[str, Any]:
    """The JSON document given on stdin ({} when there is none)."""
    text = sys.stdin.read()
    return json.loads(text) if text.strip() else {}


def peer_identity() -> dict[str, str]:
    """Which flamepy this process imported, so the test can check it is the peer."""
    return {"version": importlib.metadata.version("flamepy"), "file": str(flamepy.__file__)}


def emit(result: dict[str, Any]) -> None:
    """Print the scenario's result as one JSON line (with the peer's identity)."""
    document = {"peer": peer_identity(), **result}
    sys.stdout.write(json.dumps(document, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def error_of(exc: BaseException) -> dict[str, Any]:
    """An exception as data: type, module, message and (for FlameError) the code."""
    code = getattr(exc, "code", None)
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "code": int(code) if code is not None else None,
    }


def attempt(fn: Callable[[], Any]) -> dict[str, Any]:
    """``{"ok": True, "value": fn()}``, or ``{"ok": False, "error": ...}`` if it raised."""
    try:
        return {"ok": True, "value": fn()}
    except Exception as exc:
        return {"ok": False, "error": error_of(exc)}


def hexed(data: bytes | None) -> str | None:
    return None if data is None else bytes(data).hex()


def enum_value(value: Any) -> Any:
    """An enum member (or a bare int, as some peer paths return) as its int value."""
    return None if value is None else int(value)


def task_dict(task: Any) -> dict[str, Any]:
    """A peer ``Task`` as plain data."""
    events = task.events or []
    return {
        "id": task.id,
        "session_id": task.session_id,
        "state": enum_value(task.state),
        "input": hexed(task.input),
        "output": hexed(task.output),
        "has_completion_time": task.completion_time is not None,
        "events": [{"code": e.code, "message": e.message} for e in events],
    }
