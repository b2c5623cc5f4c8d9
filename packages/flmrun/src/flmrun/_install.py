"""Install an extracted Python application package into reusable environments.

Layout under ``root`` (shared by every session and by every process that uses it)::

    <root>/<digest>/             one per package digest: the code
        .lock                    fcntl.flock'ed while installing
        .installed               written last, atomically: the install is complete
        .inuse                   flock'ed (shared) by each instance that uses it
        install.log              installer output, one "=== ..." header per run
        src/                     a copy of the package source
        deps/                    the project itself when it has to be built
    <root>/env-<key>/            one per dependency declaration and Python version
        deps/                    ``uv pip install --target`` (or ``pip install --target``)

The declaration (``uv.lock``, ``pyproject.toml``, ``requirements.txt``, the Runner's
dependencies: :mod:`flamepy.runner._deps`) keys the environment, so a code edit
reuses it.  The first caller installs while holding the lock; concurrent callers
(threads or processes) block on it and then reuse the result.  A failed install
leaves no marker, so the next caller tries again; its error names the tool that
ran and the log file.  Least recently used directories beyond a size budget are
removed (:mod:`flmrun._envs`).

uv (resolved once: :mod:`flmrun._tools`) installs with its cache; without uv,
``<python> -m pip``.  The environment returned follows flame-config.md §4.3.
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flamepy.runner._deps import (
    INDEX_VARIABLES,
    LOCK_FILE,
    REQUIREMENTS_FILE,
    Dependencies,
    DependencyError,
    find_dependencies,
    is_generated,
)
from flmrun._envs import claim_use, prune_environments, record_size
from flmrun._errors import InstallError
from flmrun._tools import default_uv

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_DEFAULT_UV: Any = object()

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
    if not pyproject.is_file():
        return None
    try:
        data: dict[str, Any] = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return data


def is_generated_without_dependencies(src: Path) -> bool:
    """True when ``src/pyproject.toml`` is the Runner-generated one with no dependencies."""
    data = _pyproject(src)
    if data is None or not is_generated(data):
        return False
    project = data.get("project", {})
    if not isinstance(project, dict):
        return False
    deps = project.get("dependencies", [])
    return isinstance(deps, list) and not deps


def _is_generated(src: Path) -> bool:
    data = _pyproject(src)
    return data is not None and is_generated(data)


def _builds(src: Path) -> bool:
    """Whether the project is a package to build (a setup file, or a pyproject with
    a ``[build-system]``); one without is plain code, already on the path as ``src``."""
    if (src / "setup.py").is_file() or (src / "setup.cfg").is_file():
        return True
    data = _pyproject(src)
    return data is not None and isinstance(data.get("build-system"), dict)


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
    src: Path,
    *,
    root: Path,
    digest: str,
    python: str = sys.executable,
    settings: Mapping[str, str] | None = None,
    uv: str | None = _DEFAULT_UV,
) -> InstalledPackage:
    """Install the package in ``src`` into ``<root>/<digest>`` once, then reuse it.

    Its declared dependencies (:mod:`flamepy.runner._deps`: ``uv.lock``,
    ``pyproject.toml``, ``requirements.txt``, the Runner's) go to an environment
    ``<root>/env-<key>`` keyed by that declaration, the Python version and the index
    settings, shared by every version of the code.  ``settings`` are installer
    variables (index URLs) to honour besides this process's environment; ``uv`` is
    the resolved uv (None: pip; default: resolved once per process).

    Raises :class:`~flmrun._errors.InstallError` when ``src`` has no ``pyproject.toml``,
    ``setup.py`` or ``setup.cfg`` at its root, when a declaration cannot be read, when
    neither uv nor pip is available, or when the installer fails (the message names
    ``install.log`` and quotes its tail).  Blocks while another thread or process
    installs the same digest or environment.
    """
    src, root = Path(src), Path(root)
    if not _DIGEST_RE.match(digest):
        raise InstallError(f"invalid package digest {digest!r}: expected a hex digest")
    if not any((src / name).is_file() for name in PROJECT_FILES):
        raise InstallError(
            f"{src} is not a Python project: none of {', '.join(PROJECT_FILES)} at its root "
            "(the Runner generates a pyproject.toml when the directory has none)"
        )
    try:
        declared = find_dependencies(src)
    except DependencyError as exc:
        raise InstallError(f"the package's dependencies cannot be read: {exc}") from exc
    tools = _Tools(python, default_uv() if uv is _DEFAULT_UV else uv, _settings(settings))
    home = root / digest
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker = home / MARKER_NAME
    if not marker.is_file():
        with _locked(home / LOCK_NAME):
            if not marker.is_file():
                # Declared dependencies go to an environment of their own (below),
                # shared by every version of the code.
                _install(src, home, digest, tools, declared)
    env_home = None
    if not declared.installs_whole and not declared.empty:
        env_home = root / f"env-{declared.key(python_version(python), tools.settings)}"
        env_home.mkdir(mode=0o700, exist_ok=True)
        if not (env_home / MARKER_NAME).is_file():
            with _locked(env_home / LOCK_NAME):
                if not (env_home / MARKER_NAME).is_file():
                    _install_dependencies(declared, src, env_home, tools)
    used = [home] + ([env_home] if env_home is not None else [])
    for path in used:
        claim_use(path)
    prune_environments(root, keep=used)
    return _installed(home, digest, env_home)


@dataclass(frozen=True)
class _Tools:
    python: str
    uv: str | None
    settings: dict[str, str]

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings)
        return env


def _settings(given: Mapping[str, str] | None) -> dict[str, str]:
    """The index settings in effect: this process's, then ``given``; an index given
    in one installer's terms is passed on in the other's too."""
    merged = {k: os.environ[k] for k in INDEX_VARIABLES if os.environ.get(k)}
    merged.update({k: v for k, v in (given or {}).items() if k in INDEX_VARIABLES and v})
    for uv_name, pip_name in (
        ("UV_INDEX_URL", "PIP_INDEX_URL"),
        ("UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"),
        ("UV_FIND_LINKS", "PIP_FIND_LINKS"),
    ):
        if merged.get(pip_name) and not merged.get(uv_name):
            merged[uv_name] = merged[pip_name]
        elif merged.get(uv_name) and not merged.get(pip_name):
            merged[pip_name] = merged[uv_name]
    return merged


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _install_dependencies(declared: Dependencies, src: Path, home: Path, tools: _Tools) -> None:
    """Run under the lock: install what ``declared`` names into ``home/deps``, then the
    marker."""
    deps, partial = home / "deps", home / "deps.partial"
    for stale in (deps, partial):
        shutil.rmtree(stale, ignore_errors=True)
    log = home / LOG_NAME
    extras = list(declared.extras)
    if declared.source == LOCK_FILE:
        locked = _export_lock(src, home, tools)
        what = ["-r", str(locked), *extras] if extras else ["--no-deps", "-r", str(locked)]
    elif declared.source == REQUIREMENTS_FILE:
        what = ["-r", str(src / REQUIREMENTS_FILE), *extras]
    else:
        what = [*declared.requirements, *extras]
    try:
        how = _run_installer(src, partial, log, tools, what)
        os.rename(partial, deps)
        record = {
            "source": declared.source,
            "dependencies": list(declared.requirements),
            "extras": extras,
            "installer": how,
            "python": tools.python,
        }
        _write_marker(home, record)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _export_lock(src: Path, home: Path, tools: _Tools) -> Path:
    """``uv.lock`` as exact pins (``uv export --frozen``: no resolution), in ``home``."""
    if tools.uv is None:
        raise InstallError(
            f"{src} has a uv.lock, which only uv installs exactly, and uv is not on this "
            "host's PATH; install uv (https://docs.astral.sh/uv/), or remove uv.lock "
            "from the package to install pyproject.toml's ranges"
        )
    out = home / "locked-requirements.txt"
    cmd = [
        tools.uv,
        "export",
        "--frozen",
        "--no-dev",
        "--no-hashes",
        "--no-emit-project",
        "--no-emit-workspace",
        "--no-header",
        "--no-annotate",
        "--format",
        "requirements-txt",
        "--output-file",
        str(out),
    ]
    _run_logged(cmd, src, home / LOG_NAME, tools, f"exporting {LOCK_FILE} with {tools.uv}")
    return out


def _write_marker(home: Path, record: dict[str, Any]) -> None:
    record["bytes"] = record_size(home / "deps")
    tmp = home / f"{MARKER_NAME}.tmp"
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.rename(tmp, home / MARKER_NAME)


def _install(src: Path, home: Path, digest: str, tools: _Tools, declared: Dependencies) -> None:
    """Run under the lock: (re)build ``home/src`` and ``home/deps`` and write the marker.

    A project installed whole (setup.py/setup.cfg) gets its dependencies here too;
    otherwise the project installs alone (its dependencies have an environment of
    their own), and a Runner-generated pyproject not at all: its code is ``src``."""
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
        if _is_generated(pkg_src) or not _builds(pkg_src):
            how = "skipped"
            with log.open("a", encoding="utf-8") as fh:
                fh.write(_header(f"{digest}: a project without a build system"))
                fh.write("nothing to build: the code is the package's source\n")
            partial_deps.mkdir()
        elif declared.installs_whole:
            how = _run_installer(pkg_src, partial_deps, log, tools, [".", *declared.extras])
        else:
            how = _run_installer(pkg_src, partial_deps, log, tools, ["--no-deps", "."])
        os.rename(partial_deps, deps)
        _write_marker(home, {"digest": digest, "installer": how, "python": tools.python})
    except BaseException:
        shutil.rmtree(partial_deps, ignore_errors=True)
        shutil.rmtree(deps, ignore_errors=True)
        raise


def _installer_command(tools: _Tools, target: Path, what: list[str]) -> tuple[str, list[str]]:
    if tools.uv is not None:
        return tools.uv, [
            tools.uv,
            "pip",
            "install",
            "--link-mode=copy",
            "--python",
            tools.python,
            "--target",
            str(target),
            *what,
        ]
    python = tools.python
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
    return f"{python} -m pip", [
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


def _run_installer(src: Path, target: Path, log: Path, tools: _Tools, what: list[str]) -> str:
    how, cmd = _installer_command(tools, target, what)
    _run_logged(cmd, src, log, tools, f"installing the package in {src} with {how}")
    return "pip" if how.endswith(" -m pip") else "uv"


def _run_logged(cmd: list[str], cwd: Path, log: Path, tools: _Tools, what: str) -> None:
    """Run ``cmd`` in ``cwd``, its output appended to ``log``; InstallError naming
    ``what`` (which tool ran) when it fails."""
    with log.open("a", encoding="utf-8") as fh:
        fh.write(_header(" ".join(cmd) + f"  (in {cwd})"))
        fh.flush()
        try:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env=tools.environ(),
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
        raise InstallError(f"{what} failed ({code}); see {log}:\n" + _tail(log))


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
