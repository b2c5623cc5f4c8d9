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
import functools
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


def _pyproject(src: Path) -> dict[str, Any] | None:
    """``src/pyproject.toml`` parsed; None when it is missing or unreadable."""
    pyproject = Path(src) / "pyproject.toml"
    if _toml is None or not pyproject.is_file():
        return None
    try:
        data: dict[str, Any] = _toml.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, _toml.TOMLDecodeError):
        return None
    return data


def _generated(data: dict[str, Any]) -> bool:
    """Whether the parsed pyproject is the one the Runner generates."""
    tool = data.get("tool")
    flame = tool.get("flame") if isinstance(tool, dict) else None
    return isinstance(flame, dict) and flame.get("generated") is True


def is_generated_without_dependencies(src: Path) -> bool:
    """True when ``src/pyproject.toml`` is the Runner-generated one with no dependencies."""
    data = _pyproject(src)
    if data is None or not _generated(data):
        return False
    project = data.get("project", {})
    if not isinstance(project, dict):
        return False
    deps = project.get("dependencies", [])
    return isinstance(deps, list) and not deps


def declared_dependencies(src: Path) -> list[str] | None:
    """``[project] dependencies`` of a project described by ``pyproject.toml`` alone
    (no ``setup.py``/``setup.cfg``); None when the project must be installed whole."""
    src = Path(src)
    if (src / "setup.py").exists() or (src / "setup.cfg").exists():
        return None
    data = _pyproject(src)
    project = data.get("project") if data is not None else None
    if not isinstance(project, dict):
        return None
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        return None
    return [d.strip() for d in deps if d.strip()]


def _is_generated(src: Path) -> bool:
    data = _pyproject(src)
    return data is not None and _generated(data)


@functools.cache
def python_version(python: str) -> str:
    """``major.minor`` of the interpreter ``python``."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return f"{sys.version_info[0]}.{sys.version_info[1]}"
    out = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def dependency_key(deps: list[str], python: str) -> str:
    """The key of an environment: the sorted dependency set and the Python version."""
    doc = json.dumps({"dependencies": sorted(deps), "python": python_version(python)})
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


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
    declared = declared_dependencies(src)
    home = root / digest
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker = home / MARKER_NAME
    if not marker.is_file():
        with _locked(home / LOCK_NAME):
            if not marker.is_file():
                # A pyproject-only project's dependencies go to an environment of
                # their own (below), shared by every version of the code.
                _install(src, home, digest, python, with_deps=declared is None)
    env_home = None
    if declared:
        env_home = root / f"env-{dependency_key(declared, python)}"
        env_home.mkdir(mode=0o700, exist_ok=True)
        if not (env_home / MARKER_NAME).is_file():
            with _locked(env_home / LOCK_NAME):
                if not (env_home / MARKER_NAME).is_file():
                    _install_requirements(declared, src, env_home, python)
    return _installed(home, digest, env_home)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _install_requirements(requirements: list[str], src: Path, home: Path, python: str) -> None:
    """Run under the lock: install ``requirements`` into ``home/deps``, then the marker."""
    deps, partial = home / "deps", home / "deps.partial"
    for stale in (deps, partial):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        how = _run_installer(src, partial, home / LOG_NAME, python, requirements)
        os.rename(partial, deps)
        record = {"dependencies": requirements, "installer": how, "python": python}
        tmp = home / f"{MARKER_NAME}.tmp"
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.rename(tmp, home / MARKER_NAME)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _install(src: Path, home: Path, digest: str, python: str, with_deps: bool = True) -> None:
    """Run under the lock: (re)build ``home/src`` and ``home/deps`` and write the marker.

    ``with_deps`` False installs the project alone (its dependencies have an
    environment of their own), and nothing for a Runner-generated pyproject, whose
    code is ``src`` itself."""
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
        if is_generated_without_dependencies(pkg_src) or (not with_deps and _is_generated(pkg_src)):
            how = "skipped"
            with log.open("a", encoding="utf-8") as fh:
                fh.write(_header(f"{digest}: generated pyproject.toml without dependencies"))
                fh.write("nothing to install\n")
            partial_deps.mkdir()
        else:
            what = ["."] if with_deps else ["--no-deps", "."]
            how = _run_installer(pkg_src, partial_deps, log, python, what)
        os.rename(partial_deps, deps)
        record = {"digest": digest, "installer": how, "python": python, "at": time.time()}
        tmp = home / f"{MARKER_NAME}.tmp"
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.rename(tmp, home / MARKER_NAME)
    except BaseException:
        shutil.rmtree(partial_deps, ignore_errors=True)
        shutil.rmtree(deps, ignore_errors=True)
        raise


def _installer_command(python: str, target: Path, what: list[str]) -> tuple[str, list[str]]:
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
            *what,
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
        *what,
    ]


def _run_installer(
    src: Path, target: Path, log: Path, python: str, what: list[str] | None = None
) -> str:
    how, cmd = _installer_command(python, target, what or ["."])
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


def _installed(home: Path, digest: str, env_home: Path | None = None) -> InstalledPackage:
    """The package's environment: its own ``deps`` (the project itself), then the
    dependency environment it shares with other versions of the code, then ``src``."""
    src, deps = home / "src", home / "deps"
    trees = [deps] + ([env_home / "deps"] if env_home is not None else [])
    env = {
        "PYTHONPATH": os.pathsep.join([*(str(t) for t in trees), str(src)]),
        "FLAME_PACKAGE_DIGEST": digest,
        "FLAME_PACKAGE_SRC": str(src),
    }
    if env_home is not None:
        env["FLAME_PACKAGE_ENV"] = str(env_home)
    libs = [d for t in trees for d in library_dirs(t)]
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    bins = [str(t / "bin") for t in trees if (t / "bin").is_dir()]
    if bins:
        env["PATH"] = os.pathsep.join(bins)
    return InstalledPackage(digest=digest, src=src, deps=deps, env=env)
