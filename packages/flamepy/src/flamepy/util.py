"""Small helpers of Flame's SDK (``flamepy.util`` in 0.6)."""

from __future__ import annotations

import secrets
import string

__all__ = ["short_name"]

_ALPHABET = string.ascii_letters + string.digits


def short_name(prefix: str, length: int = 6) -> str:
    """``"<prefix>-<length random [A-Za-z0-9]>"``, drawn from the OS's random source.

    This is the session id format of Flame's SDK (``short_name("app")`` gives
    ``"app-x3Zq9B"``); a ``length`` of 0 or less leaves ``"<prefix>-"``.
    """
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(length))
    return f"{prefix}-{suffix}"
