"""Which dependencies a Runner package declares, read the same way on both sides.

The client uses this to report what it found (at INFO, and in ``Runner(...,
dry_run=True)``); flmrun uses it to build the executor-side environment.  In
order of precedence:

1. ``uv.lock`` next to a ``pyproject.toml``: installed exactly (``uv export
   --frozen``), the project's own code excluded;
2. ``pyproject.toml`` ``[project] dependencies``;
3. ``requirements.txt``, ``-r``/``-c`` includes followed;
4. ``Runner(dependencies=[...])``, merged with whichever of the above applies.
   In a tree without a project file they are in the generated ``pyproject.toml``;
   in one with its own project they travel in ``.flame/dependencies.txt``.

A ``setup.py``/``setup.cfg`` project without a ``uv.lock`` is installed whole
(its dependencies cannot be read without running it).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXTRA_FILE = ".flame/dependencies.txt"
"""Where the Runner puts its ``dependencies`` in a tree that has its own project."""
REQUIREMENTS_FILE = "requirements.txt"
LOCK_FILE = "uv.lock"
INDEX_VARIABLES = (
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
)
"""Installer settings that change what gets installed: passed on, and part of an
environment's key."""
MAX_INCLUDE_DEPTH = 16
_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s+|=)(\S+)\s*$")


class DependencyError(ValueError):
    """A dependency declaration that cannot be read (the message names the file)."""


@dataclass(frozen=True)
class Dependencies:
    """What a package declares.

    ``source`` is the declaration that applies (``uv.lock``, ``pyproject.toml``,
    ``requirements.txt``, ``Runner dependencies``, ``setup.py`` for a project
    installed whole, or ``none``); ``requirements`` are the declared requirement
    lines (for ``uv.lock``, the locked ``name==version`` pins, read from the lock);
    ``extras`` the Runner's own; ``files`` the declaration files read (relative),
    whose contents ``material`` holds for the environment key.
    """

    source: str
    requirements: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    material: str = ""

    @property
    def installs_whole(self) -> bool:
        return self.source == "setup.py"

    @property
    def empty(self) -> bool:
        return self.source == "none" and not self.extras

    def key(self, python: str, settings: Mapping[str, str] = {}) -> str:
        """The environment key: the declaration, the Python version and the
        installer's index settings."""
        doc = {
            "source": self.source,
            "material": self.material,
            "extras": sorted(self.extras),
            "python": python,
            "index": {k: settings[k] for k in INDEX_VARIABLES if settings.get(k)},
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]

    def describe(self) -> str:
        parts = []
        if self.source == "uv.lock":
            parts.append(f"uv.lock: {len(self.requirements)} locked package(s)")
        elif self.source in ("pyproject.toml", "requirements.txt", "Runner dependencies"):
            shown = ", ".join(self.requirements) or "nothing"
            parts.append(f"{self.source}: {shown}")
        elif self.source == "setup.py":
            parts.append("setup.py/setup.cfg: the project is installed with its dependencies")
        else:
            parts.append("no declared dependencies")
        if self.extras:
            parts.append(f"plus Runner dependencies: {', '.join(self.extras)}")
        return "; ".join(parts)


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DependencyError(f"cannot read {path.name}: {exc}") from exc


def _lines(text: str) -> list[str]:
    out = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


def _requirements(root: Path, rel: str, seen: list[str], depth: int = 0) -> list[str]:
    """The requirement lines of ``rel`` with its includes followed (their contents go
    to ``seen`` as ``(file, text)`` material)."""
    if depth > MAX_INCLUDE_DEPTH:
        raise DependencyError(f"{rel}: includes nest deeper than {MAX_INCLUDE_DEPTH} levels")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DependencyError(f"{rel}: an include outside the project is not packaged")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DependencyError(f"cannot read {rel}: {exc.strerror or exc}") from exc
    seen.append(f"{rel}\0{text}")
    found = []
    for line in _lines(text):
        include = _INCLUDE.match(line)
        if include:
            nested = (Path(rel).parent / include.group(2)).as_posix()
            lines = _requirements(root, nested, seen, depth + 1)
            if include.group(1) in ("-r", "--requirement"):
                found.extend(lines)
            continue
        if not line.startswith("-"):
            found.append(line)
    return found


def _project(src: Path) -> dict[str, Any] | None:
    pyproject = src / "pyproject.toml"
    return _toml(pyproject) if pyproject.is_file() else None


def is_generated(data: dict[str, Any] | None) -> bool:
    """Whether a parsed pyproject is the one the Runner generates."""
    tool = data.get("tool") if data else None
    flame = tool.get("flame") if isinstance(tool, dict) else None
    return isinstance(flame, dict) and flame.get("generated") is True


def _declared(data: dict[str, Any] | None) -> list[str]:
    project = data.get("project") if data else None
    deps = project.get("dependencies", []) if isinstance(project, dict) else []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise DependencyError("pyproject.toml: [project] dependencies must be a list of strings")
    return [d.strip() for d in deps if d.strip()]


def _locked(src: Path, data: dict[str, Any] | None) -> list[str]:
    """``name==version`` of every registry package in uv.lock, the project excluded."""
    lock = _toml(src / LOCK_FILE)
    own = data.get("project", {}).get("name") if data else None
    pins = []
    for package in lock.get("package", []):
        source = package.get("source", {})
        if package.get("name") == own or not isinstance(source, dict):
            continue
        if "registry" in source and package.get("version"):
            pins.append(f"{package['name']}=={package['version']}")
    return sorted(pins)


def find_dependencies(src: Path, extras: Sequence[str] = ()) -> Dependencies:
    """What the tree at ``src`` declares; ``extras`` are Runner dependencies not yet in
    the tree (the client's view); ``.flame/dependencies.txt`` is read too."""
    src = Path(src)
    data = _project(src)
    generated = is_generated(data)
    extra_file = src / EXTRA_FILE
    more = list(extras)
    if extra_file.is_file():
        more += _lines(extra_file.read_text(encoding="utf-8"))
    if generated:
        more += _declared(data)  # the generated project holds the Runner's
    extras_t = tuple(dict.fromkeys(more))
    if data is not None and not generated and (src / LOCK_FILE).is_file():
        text = (src / LOCK_FILE).read_text(encoding="utf-8")
        return Dependencies(
            "uv.lock", tuple(_locked(src, data)), extras_t, (LOCK_FILE,), f"{LOCK_FILE}\0{text}"
        )
    if (src / "setup.py").is_file() or (src / "setup.cfg").is_file():
        return Dependencies("setup.py", (), extras_t)
    declared = [] if generated else _declared(data)
    if declared:
        material = json.dumps(sorted(declared))
        return Dependencies(
            "pyproject.toml", tuple(declared), extras_t, ("pyproject.toml",), material
        )
    if (src / REQUIREMENTS_FILE).is_file():
        seen: list[str] = []
        lines = _requirements(src, REQUIREMENTS_FILE, seen)
        files = tuple(s.split("\0", 1)[0] for s in seen)
        return Dependencies("requirements.txt", tuple(lines), extras_t, files, "\n".join(seen))
    if extras_t:
        return Dependencies("Runner dependencies", extras_t, (), (), json.dumps(sorted(extras_t)))
    return Dependencies("none")


__all__ = [
    "EXTRA_FILE",
    "INDEX_VARIABLES",
    "Dependencies",
    "DependencyError",
    "find_dependencies",
    "is_generated",
]
