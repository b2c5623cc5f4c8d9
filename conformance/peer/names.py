"""The peer's public names per module, and the defaults of its public dataclasses."""

from __future__ import annotations

import dataclasses
import importlib

from _common import emit

MODULES = (
    "flamepy",
    "flamepy.core",
    "flamepy.core.service",
    "flamepy.core.cache",
    "flamepy.cache",
    "flamepy.util",
    "flamepy.runner",
    "flamepy.service",
)


def _own(module: object, name: str) -> bool:
    """Whether ``name`` is the module's own API, not an import it happens to hold
    (``Optional``, ``np``, ``logging``): flamepy's classes and functions, and
    upper-case constants."""
    value = getattr(module, name)
    if isinstance(value, type) or callable(value):
        return str(getattr(value, "__module__", "")).startswith("flamepy")
    if type(value).__name__ == "module":
        return str(getattr(value, "__name__", "")).startswith("flamepy")
    return name.isupper()


def public(module: object) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_") and _own(module, n)]
    return sorted(str(n) for n in names)


def defaults(cls: type) -> dict[str, str]:
    found = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            found[f.name] = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = repr(f.default_factory())
    return found


names: dict[str, list[str]] = {}
classes: dict[str, dict[str, str]] = {}
for name in MODULES:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        names[name] = [f"<import error: {exc}>"]
        continue
    names[name] = public(module)
    for attr in names[name]:
        value = getattr(module, attr, None)
        if isinstance(value, type) and dataclasses.is_dataclass(value) and name == "flamepy":
            classes[attr] = defaults(value)


def validation() -> dict[str, str]:
    """The documented ValueErrors: bad SessionContext ids, an autoscaled object."""
    from flamepy.runner import RunnerContext, SessionContext

    class Counter:
        pass

    cases = {
        "empty session id": lambda: SessionContext(session_id=""),
        "long session id": lambda: SessionContext(session_id="x" * 129),
        "session id not str": lambda: SessionContext(session_id=5),
        "application name not str": lambda: SessionContext(application_name=5),
        "autoscaled object": lambda: RunnerContext(Counter(), autoscale=True),
    }
    seen = {}
    for label, make in cases.items():
        try:
            make()
            seen[label] = "accepted"
        except ValueError:
            seen[label] = "ValueError"
    return seen


emit({"names": names, "defaults": classes, "validation": validation()})
