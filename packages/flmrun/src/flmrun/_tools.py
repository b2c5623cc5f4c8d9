"""The installer tools, resolved once to absolute paths, outside any project.

``uv`` found on PATH may be a version-manager shim (pyenv, asdf): a script that
picks the real program from the ``.python-version`` of the directory it runs in.
Installers run inside the user's package, so a project whose ``.python-version``
names a Python without uv made every install of it fail (exit 127).  The real
program is therefore found when the cluster (or flmrun) starts: a shim is asked
where its program is (``pyenv which``) from a neutral directory, and otherwise
skipped in favour of the next ``uv`` on PATH.  The interpreter is already
absolute (``sys.executable``), and pip runs as ``<python> -m pip``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("flmrun.install")

SHIM_DIRS = ("shims",)
"""Directory names version managers keep their shims in (pyenv, asdf, rbenv)."""
RESOLVE_TIMEOUT = 30.0


def _is_shim(path: Path) -> bool:
    return path.parent.name in SHIM_DIRS


MANAGERS = (("pyenv", "PYENV_ROOT", "~/.pyenv"), ("asdf", "ASDF_DATA_DIR", "~/.asdf"))
"""Version managers whose ``<root>/shims`` hold shims, with their root's variable."""


def _managers_of(shim: Path) -> list[str]:
    """The version manager programs that own ``shim``'s directory."""
    root = shim.parent.parent
    found = []
    for manager, variable, default in MANAGERS:
        own = root / "bin" / manager
        if own.is_file() and os.access(own, os.X_OK):
            found.append(str(own))
            continue
        configured = Path(os.path.expanduser(os.environ.get(variable) or default))
        on_path = shutil.which(manager)
        if on_path and configured.resolve() == root.resolve():
            found.append(on_path)
    return found


def _through_shim(shim: Path, name: str) -> str | None:
    """The program a pyenv/asdf shim stands for, asked from a neutral directory."""
    for exe in _managers_of(shim):
        for cwd in (os.path.expanduser("~"), "/"):
            try:
                out = subprocess.run(
                    [exe, "which", name],
                    cwd=cwd,
                    capture_output=True,
                    text=True,
                    timeout=RESOLVE_TIMEOUT,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            found = out.stdout.strip().splitlines()[-1:] if out.returncode == 0 else []
            if found and os.path.isabs(found[0]) and os.access(found[0], os.X_OK):
                return found[0]
    return None


def resolve_tool(name: str, path: str | None = None) -> str | None:
    """The absolute path of the real ``name``: next to this interpreter, else the first
    on ``path`` (default PATH) that is not a shim, or a shim's own program."""
    beside = Path(sys.executable).parent / name
    candidates = [beside] if beside.is_file() and os.access(beside, os.X_OK) else []
    for entry in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        if entry:
            candidate = Path(entry) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                candidates.append(candidate)
    for candidate in candidates:
        if not _is_shim(candidate):
            return str(candidate.absolute())
        real = _through_shim(candidate, name)
        if real is not None:
            log.debug("%s on PATH is a shim for %s", candidate, real)
            return real
    return None


@functools.cache
def default_uv() -> str | None:
    """uv for this process's installs, resolved at its first use (cluster start)."""
    found = resolve_tool("uv")
    log.debug("installer tool uv: %s", found or "not found; pip is used")
    return found


__all__ = ["default_uv", "resolve_tool"]
