"""The service-author API under Flame SDK 0.6's names: ``FlameService``, the
contexts it receives, ``run`` and ``FLAME_INSTANCE_ENDPOINT``.

There is one implementation, flmrun's (the instance process): these names are
loaded from it when first used, so flamepy stays a pure client and imports no
server code until a program asks for it.  Without flmrun, using them raises an
ImportError that says what to install.
"""

from __future__ import annotations

import importlib
from typing import Any

from flamepy._errors import FlameError, FlameErrorCode
from flamepy._hints import install_hint

FLAME_INSTANCE_ENDPOINT = "FLAME_INSTANCE_ENDPOINT"
"""The environment variable naming the Unix socket an instance serves on."""

SERVICE_NAMES = ("ApplicationContext", "FlameService", "SessionContext", "TaskContext", "run")
"""What flmrun provides under these names."""


def load(name: str) -> Any:
    """``name`` from flmrun, or an ImportError that names the fix."""
    try:
        flmrun = importlib.import_module("flmrun")
    except ModuleNotFoundError as exc:
        if exc.name != "flmrun":
            raise
        raise ImportError(
            f"flamepy.{name} is the service-author API, which the flmrun package "
            "provides (the process a Flame executor launches); install it: "
            + install_hint("flmrun")
        ) from exc
    return getattr(flmrun, name)


def __getattr__(name: str) -> Any:
    if name in SERVICE_NAMES:
        return load(name)
    raise AttributeError(f"module 'flamepy.core.service' has no attribute {name!r}")


__all__ = ["FLAME_INSTANCE_ENDPOINT", "FlameError", "FlameErrorCode", *SERVICE_NAMES]
