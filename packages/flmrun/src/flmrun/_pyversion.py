"""Refusing code pickled by value by another Python version.

cloudpickle sends functions and classes that are not importable here (defined in
``__main__``, or in a notebook) *by value*: as code objects, whose layout changes
with every Python minor version.  A 3.12 client's lambda on a 3.11 instance
fails with an obscure unpickling error, or builds a code object that misbehaves.
The client marks its pickles with its ``major.minor`` (``flame_python``); this
module reads that mark straight from the bytes (a string search, so a matching
version costs nothing) and, on a mismatch, looks for by-value code with
``pickletools`` before anything is unpickled.  Code pickled by reference (a
module of the package) travels between versions and is let through.
"""

from __future__ import annotations

import pickletools
import re
import sys
from typing import Any

from flamepy.runner.types import PYTHON_ATTRIBUTE
from flmrun._errors import PythonVersionError

THIS_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
_MARK = b"\x8c" + bytes([len(PYTHON_ATTRIBUTE)]) + PYTHON_ATTRIBUTE.encode()  # SHORT_BINUNICODE
_MEMOIZE = b"\x94"
_VERSION = re.compile(r"\d+\.\d+")
_BY_VALUE = frozenset(
    {
        "_make_function",
        "_make_skeleton_class",
        "_make_skeleton_enum",
        "_builtin_type",
        "_make_code",
    }
)
"""cloudpickle's builders of functions, classes and code objects sent by value."""


def sender_python(payload: Any) -> str | None:
    """The ``major.minor`` the client marked ``payload`` with; None when unmarked."""
    raw = payload if isinstance(payload, bytes) else bytes(payload)
    at = raw.find(_MARK)
    while at >= 0:
        i = at + len(_MARK)
        if raw[i : i + 1] == _MEMOIZE:
            i += 1
        if raw[i : i + 1] == b"\x8c" and i + 1 < len(raw):
            size = raw[i + 1]
            text = raw[i + 2 : i + 2 + size].decode("ascii", "replace")
            if _VERSION.fullmatch(text):
                return text
        at = raw.find(_MARK, at + 1)
    return None


def carries_code_by_value(payload: Any) -> bool:
    """Whether the pickle builds a function, class or code object from its bytes."""
    memo: list[Any] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(bytes(payload)):
            name = op.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(str(arg))
            elif name == "MEMOIZE":
                memo.append(strings[-1] if strings else None)
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                index = int(str(arg))
                value = memo[index] if index < len(memo) else None
                if isinstance(value, str):
                    strings.append(value)
            elif name == "STACK_GLOBAL":
                module, attr = (strings[-2], strings[-1]) if len(strings) > 1 else ("", "")
                if module.startswith("cloudpickle") and attr in _BY_VALUE:
                    return True
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                if module.startswith("cloudpickle") and attr in _BY_VALUE:
                    return True
    except (ValueError, IndexError):
        return False  # not a pickle this parser reads: unpickling will say more
    return False


def mismatch_message(sender: str, what: str) -> str:
    return (
        f"{what} holds code pickled by value by Python {sender} (the client), but this "
        f"instance runs Python {THIS_PYTHON}: code objects do not travel between Python "
        f"versions. Run the client on Python {THIS_PYTHON}; or move the code into a module "
        "of the project (it then travels by reference); or run the instances on Python "
        f"{sender}: Runner(python_version='{sender}') sets the application's "
        f"FLAME_PYTHON_VERSION on a Flame cluster, and a local cluster runs on the "
        f"interpreter that starts it (uv run --python {sender} flame-local up)"
    )


def check_payload(payload: Any, what: str, sender: str | None = None) -> str | None:
    """Raise :class:`PythonVersionError` when ``payload`` (a pickle from a client of
    Python ``sender``, read from its mark when None) carries by-value code of
    another Python version; return the sender's version."""
    if sender is None:
        sender = sender_python(payload)
    if sender is None or sender == THIS_PYTHON:
        return sender
    if carries_code_by_value(payload):
        raise PythonVersionError(mismatch_message(sender, what))
    return sender


__all__ = [
    "THIS_PYTHON",
    "carries_code_by_value",
    "check_payload",
    "mismatch_message",
    "sender_python",
]
