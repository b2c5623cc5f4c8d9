"""Install an extracted Python application package into a reusable, digest-keyed environment.

Layout under ``root`` (one directory per package digest, shared by every session and by
every process that uses the same ``root``)::

    <root>/<digest>/.lock        fcntl.flock'ed while installing
    <root>/<digest>/.installed   written last, atomically: the install is complete
    <root>/<digest>/install.log  installer output, one "=== ..." header per run
    <root>/<digest>/src/         a copy of the package source
    <root>/<digest>/deps/        ``uv pip install --target`` (or ``pip install --target``)

The first caller for a digest installs while holding the lock; concurrent callers (threads
or processes) block on the lock and then reuse the result.  A failed install leaves no
marker, so the next caller tries again; its error names the log file.

The package is installed with ``uv pip install --link-mode=copy --python <python> --target
<deps> .`` when ``uv`` is on PATH, else with ``<python> -m pip install --target <deps> .``.
The installer is skipped (``deps`` stays empty) for the minimal ``pyproject.toml`` the
Runner generates for users without one: ``[tool.flame] generated = true`` and no
``[project] dependencies``.  The environment returned follows flame-config.md §4.3.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flmrun._errors import InstallError

try:  # Python 3.11+; without it the installer simply always runs
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    _toml = None  # type: ignore[assignment]

__all__ = [
    "INSTALL_TIMEOUT",
    "LOG_NAME",
    "MARKER_NAME",
    "PROJECT_FILES",
    "InstalledPackage",
    "install_python_package",
    "is_generated_without_dependencies",
    "library_dirs",
    "package_digest",
]

PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")
MARKER_NAME = ".installed"
LOCK_NAME = ".lock"
LOG_NAME = "install.log"
INSTALL_TIMEOUT = 1800.0
"""Seconds one installer run may take before it is killed and the install fails."""
LIBRARY_DEPTH = 4
_DIGEST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LOG_TAIL = 20
_SHARED_LIB_RE = re.compile(r"\.so(\.\d+)*$")


@dataclass(frozen=True)
class InstalledPackage:
    """An installed package: its digest, source and dependency directories, and the
    environment entries an instance needs (``PYTHONPATH``, and where applicable
    ``LD_LIBRARY_PATH`` and ``PATH``, are prefixes to put in front of existing values)."""

    digest: str
    src: Path
    deps: Path
    env: dict[str, str] = field(default_factory=dict)


def package_digest(path: Path) -> str:
    """Lowercase hex SHA-256 of the file at ``path``, read in chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            sha.update(chunk)
    return sha.hexdigest()


def is_generated_without_dependencies(src: Path) -> bool:
    """True when ``src/pyproject.toml`` is the Runner-generated one with no dependencies."""
    pyproject = Path(src) / "pyproject.toml"
    if _toml is None or not pyproject.is_file():
        return False
    try:
        data: dict[str, Any] = _toml.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, _toml.TOMLDecodeError):
        return False
    tool = data.get("tool")
    flame = tool.get("flame") if isinstance(tool, dict) else None
    if not isinstance(flame, dict) or flame.get("generated") is not True:
        return False
    project = data.get("project", {})
    if not isinstance(project, dict):
        return False
    deps = project.get("dependencies", [])
    return isinstance(deps, list) and not deps


def library_dirs(deps: Path, max_depth: int = LIBRARY_DEPTH) -> list[str]:
    """Directories under ``deps`` (depth 0..max_depth) that hold ``*.so``/``*.so.N`` files."""
    found: list[str] = []
    base_depth = len(deps.parts)
    for dirpath, dirnames, filenames in os.walk(deps):
        depth = len(Path(dirpath).parts) - base_depth
        if depth >= max_depth:
            dirnames.clear()
        if any(_SHARED_LIB_RE.search(n) for n in filenames):
            found.append(dirpath)
        dirnames.sort()
    return sorted(found)


def install_python_package(
    src: Path, *, root: Path, digest: str, python: str = sys.executable
) -> InstalledPackage:
    """Install the package in ``src`` into ``<root>/<digest>`` once, then reuse it.

    Raises :class:`~flmrun._errors.InstallError` when ``src`` has no ``pyproject.toml``,
    ``setup.py`` or ``setup.cfg`` at its root, when neither uv nor pip is available, or
    when the installer fails (the message names ``install.log`` and quotes its tail).
    Blocks while another thread or process installs the same digest.
    """
    src, root = Path(src), Path(root)
    if not _DIGEST_RE.match(digest):
        raise InstallError(f"invalid package digest {digest!r}: expected a hex digest")
    if not any((src / name).is_file() for name in PROJECT_FILES):
        raise InstallError(
            f"{src} is not a Python project: none of {', '.join(PROJECT_FILES)} at its root "
            "(the Runner generates a pyproject.toml when the directory has none)"
        )
    home = root / digest
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker = home / MARKER_NAME
    if not marker.is_file():
        with _locked(home / LOCK_NAME):
            if not marker.is_file():
                _install(src, home, digest, python)
    return _installed(home, digest)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _install(src: Path, home: Path, digest: str, python: str) -> None:
    """Run under the lock: (re)build ``home/src`` and ``home/deps`` and write the marker."""
    pkg_src, deps, log = home / "src", home / "deps", home / LOG_NAME
    partial_deps = home / "deps.partial"
    for stale in (deps, partial_deps):
        shutil.rmtree(stale, ignore_errors=True)
    if src.resolve() != pkg_src.resolve():
        shutil.rmtree(pkg_src, ignore_errors=True)
        partial_src = home / "src.partial"
        shutil.rmtree(partial_src, ignore_errors=True)
        shutil.copytree(src, partial_src, symlinks=True)
        os.rename(partial_src, pkg_src)
    try:
        if is_generated_without_dependencies(pkg_src):
            how = "skipped"
            with log.open("a", encoding="utf-8") as fh:
                fh.write(_header(f"{digest}: generated pyproject.toml without dependencies"))
                fh.write("nothing to install\n")
            partial_deps.mkdir()
        else:
            how = _run_installer(pkg_src, partial_deps, log, python)
        os.rename(partial_deps, deps)
        record = {"digest": digest, "installer": how, "python": python, "at": time.time()}
        tmp = home / f"{MARKER_NAME}.tmp"
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.rename(tmp, home / MARKER_NAME)
    except BaseException:
        shutil.rmtree(partial_deps, ignore_errors=True)
        shutil.rmtree(deps, ignore_errors=True)
        raise


def _installer_command(python: str, target: Path) -> tuple[str, list[str]]:
    uv = shutil.which("uv")
    if uv is not None:
        return "uv", [
            uv,
            "pip",
            "install",
            "--link-mode=copy",
            "--python",
            python,
            "--target",
            str(target),
            ".",
        ]
    try:
        probe = subprocess.run(
            [python, "-m", "pip", "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        has_pip = probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        has_pip = False
    if not has_pip:
        raise InstallError(
            f"cannot install Python packages: 'uv' is not on PATH and {python} has no pip; "
            f"install uv (https://docs.astral.sh/uv/) or run '{python} -m ensurepip'"
        )
    return "pip", [
        python,
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "--target",
        str(target),
        ".",
    ]


def _run_installer(src: Path, target: Path, log: Path, python: str) -> str:
    how, cmd = _installer_command(python, target)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(_header(" ".join(cmd) + f"  (in {src})"))
        fh.flush()
        try:
            proc = subprocess.run(
                cmd,
                cwd=src,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
            code: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {INSTALL_TIMEOUT:g}s"
        except OSError as exc:
            code = f"could not start: {exc}"
        fh.write(f"=== exit: {code}\n")
    if code != 0:
        raise InstallError(
            f"installing the package in {src} with {how} failed ({code}); see {log}:\n" + _tail(log)
        )
    return how


def _header(what: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return f"=== {stamp} pid {os.getpid()}: {what}\n"


def _tail(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-_LOG_TAIL:])


def _installed(home: Path, digest: str) -> InstalledPackage:
    src, deps = home / "src", home / "deps"
    env = {
        "PYTHONPATH": os.pathsep.join([str(deps), str(src)]),
        "FLAME_PACKAGE_DIGEST": digest,
        "FLAME_PACKAGE_SRC": str(src),
    }
    libs = library_dirs(deps)
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    if (deps / "bin").is_dir():
        env["PATH"] = str(deps / "bin")
    return InstalledPackage(digest=digest, src=src, deps=deps, env=env)
