"""Tests of :func:`flmrun._install.install_python_package` with real installers.

Most projects here use a tiny in-tree PEP 517 backend (``build-system.requires = []``)
so uv builds and installs them without touching a package index; the backend appends a
line to a counter file each time it builds, which is how "the installer ran once" is
proven.  One test installs a real setuptools project (uv may fetch setuptools).  Imports
are always proven in a fresh ``python`` subprocess using the returned environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from flmrun._errors import FlmrunError, InstallError
from flmrun._install import (
    LOG_NAME,
    MARKER_NAME,
    InstalledPackage,
    install_python_package,
    is_generated_without_dependencies,
    library_dirs,
    package_digest,
)
from flmrun._tools import resolve_tool

BACKEND = '''
"""In-tree PEP 517 backend for tests: wheels up <name>/ plus configured extra files."""
import base64, hashlib, json, os, time, zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    cfg = json.loads((HERE / "backend.json").read_text())
    with open(cfg["counter"], "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(cfg.get("sleep", 0))
    if cfg.get("fail"):
        raise RuntimeError("BACKEND-FAILS-ON-PURPOSE")
    name, version = cfg["name"], "0.1.0"
    dist = f"{name}-{version}.dist-info"
    files = {}
    for path in sorted((HERE / name).rglob("*")):
        if path.is_file():
            files[path.relative_to(HERE).as_posix()] = path.read_bytes()
    for rel, text in cfg.get("extra", {}).items():
        files[rel] = text.encode()
    metadata = f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n"
    files[f"{dist}/METADATA"] = metadata.encode()
    wheel_info = "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\n"
    wheel_info += "Tag: py3-none-any\\n"
    files[f"{dist}/WHEEL"] = wheel_info.encode()
    record = []
    for rel, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return wheel
'''


def intree_project(
    path: Path,
    name: str,
    *,
    sleep: float = 0.0,
    fail: bool = False,
    extra: dict[str, str] | None = None,
) -> Path:
    """A project built by the in-tree backend; returns the counter file."""
    (path / name).mkdir(parents=True)
    (path / name / "__init__.py").write_text(f"WHERE = 'deps:{name}'\n")
    (path / "backend.py").write_text(BACKEND)
    (path / "pyproject.toml").write_text(
        textwrap.dedent(f"""
            [build-system]
            requires = []
            build-backend = "backend"
            backend-path = ["."]

            [project]
            name = "{name}"
            version = "0.1.0"
        """)
    )
    counter = path.parent / f"{path.name}.builds"
    cfg = {"name": name, "counter": str(counter), "sleep": sleep, "fail": fail}
    cfg["extra"] = extra or {}
    (path / "backend.json").write_text(json.dumps(cfg))
    return counter


def builds(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def run_python(pkg: InstalledPackage, code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter with the package environment; return stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    env.update(pkg.env)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def log_runs(pkg_home: Path) -> int:
    """How many installer runs ``install.log`` records (one ``=== <time>`` header each)."""
    lines = (pkg_home / LOG_NAME).read_text().splitlines()
    return sum(1 for line in lines if line.startswith("=== ") and not line.startswith("=== exit"))


GENERATED = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "gen-app"
version = "0.1.0"
requires-python = ">=3.9"
dependencies = []

[tool.flame]
generated = true
"""


def test_generated_pyproject_skips_installer(tmp_path: Path) -> None:
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "pyproject.toml").write_text(GENERATED)
    (src / "usermod.py").write_text("def answer():\n    return 42\n")
    root = tmp_path / "envs"
    pkg = install_python_package(src, root=root, digest="ab12", python=sys.executable)
    home = root / "ab12"
    assert pkg.src == home / "src" and pkg.deps == home / "deps" and pkg.digest == "ab12"
    assert (pkg.src / "usermod.py").is_file()
    assert pkg.deps.is_dir() and list(pkg.deps.iterdir()) == []
    assert pkg.env == {
        "PYTHONPATH": f"{pkg.deps}{os.pathsep}{pkg.src}",
        "FLAME_PACKAGE_DIGEST": "ab12",
        "FLAME_PACKAGE_SRC": str(pkg.src),
    }
    assert json.loads((home / MARKER_NAME).read_text())["installer"] == "skipped"
    assert "nothing to build" in (home / LOG_NAME).read_text()
    out = run_python(pkg, "import usermod; print(usermod.answer(), usermod.__file__)", tmp_path)
    assert out == f"42 {pkg.src / 'usermod.py'}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GENERATED, True),
        ('[project]\nname = "x"\n[tool.flame]\ngenerated = true\n', True),
        (GENERATED.replace("dependencies = []", 'dependencies = ["requests"]'), False),
        (GENERATED.replace("generated = true", "generated = false"), False),
        (GENERATED.replace("generated = true", 'generated = "true"'), False),
        (GENERATED.replace("[tool.flame]\ngenerated = true\n", ""), False),
        ("this is [not toml", False),
    ],
)
def test_generated_detection(tmp_path: Path, text: str, expected: bool) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    assert is_generated_without_dependencies(tmp_path) is expected


def test_setuptools_project_installs_with_uv(tmp_path: Path) -> None:
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    src = tmp_path / "proj"
    (src / "flame_probe_st").mkdir(parents=True)
    (src / "flame_probe_st" / "__init__.py").write_text("KIND = 'setuptools'\n")
    (src / "pyproject.toml").write_text(
        textwrap.dedent("""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "flame-probe-st"
            version = "0.1.0"

            [tool.setuptools]
            packages = ["flame_probe_st"]
        """)
    )
    pkg = install_python_package(src, root=tmp_path / "envs", digest="5e7", python=sys.executable)
    assert (pkg.deps / "flame_probe_st" / "__init__.py").is_file()
    marker = json.loads((tmp_path / "envs/5e7" / MARKER_NAME).read_text())
    assert marker["installer"] == "uv"
    out = run_python(pkg, "import flame_probe_st as m; print(m.KIND, m.__file__)", tmp_path)
    assert out == f"setuptools {pkg.deps / 'flame_probe_st' / '__init__.py'}"


def test_intree_project_installs_into_deps_with_libs_and_scripts(tmp_path: Path) -> None:
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    extra = {
        "treepkg/native/libfake.so": "not really ELF",
        "treepkg/native/libver.so.1.2": "x",
        "treepkg/a/b/c/libdeep.so": "x",  # depth 4: found
        "treepkg/a/b/c/d/libdeeper.so": "x",  # depth 5: too deep
        "treepkg-0.1.0.data/scripts/treetool": "#!python\nprint('tool ran')\n",
    }
    src = tmp_path / "proj"
    counter = intree_project(src, "treepkg", extra=extra)
    pkg = install_python_package(src, root=tmp_path / "envs", digest="c0ffee")
    assert builds(counter) == 1
    assert pkg.env["LD_LIBRARY_PATH"].split(os.pathsep) == [
        str(pkg.deps / "treepkg/a/b/c"),
        str(pkg.deps / "treepkg/native"),
    ]
    assert library_dirs(pkg.deps, max_depth=5)[-2:] == [
        str(pkg.deps / "treepkg/a/b/c/d"),
        str(pkg.deps / "treepkg/native"),
    ]
    assert pkg.env["PATH"] == str(pkg.deps / "bin")
    assert (pkg.deps / "bin/treetool").is_file()
    out = run_python(pkg, "import treepkg; print(treepkg.WHERE, treepkg.__file__)", tmp_path)
    assert out == f"deps:treepkg {pkg.deps / 'treepkg/__init__.py'}"
    assert not (src / "build").exists()  # the build happened in the copy, not in src


def test_second_install_of_same_digest_reuses(tmp_path: Path) -> None:
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    src = tmp_path / "proj"
    counter = intree_project(src, "reusepkg")
    root = tmp_path / "envs"
    first = install_python_package(src, root=root, digest="d1")
    home = root / "d1"
    log_before = (home / LOG_NAME).read_text()
    marker = (home / MARKER_NAME).read_text()
    shutil.rmtree(src)  # the second call must not even need the source again...
    src.mkdir()
    (src / "setup.py").write_text("raise SystemExit('must not run')\n")  # ...nor build it
    second = install_python_package(src, root=root, digest="d1")
    assert second == first
    assert builds(counter) == 1
    assert (home / LOG_NAME).read_text() == log_before
    assert log_runs(home) == 1
    assert (home / MARKER_NAME).read_text() == marker  # not installed again, only used


def test_missing_project_file_is_an_install_error(tmp_path: Path) -> None:
    src = tmp_path / "bare"
    src.mkdir()
    (src / "main.py").write_text("print('hi')\n")
    (src / "sub").mkdir()
    (src / "sub" / "pyproject.toml").write_text(GENERATED)  # not at the root: ignored
    with pytest.raises(InstallError, match=r"pyproject\.toml, setup\.py, setup\.cfg") as info:
        install_python_package(src, root=tmp_path / "envs", digest="e1")
    assert isinstance(info.value, FlmrunError)
    assert not (tmp_path / "envs" / "e1" / MARKER_NAME).exists()


def test_invalid_digest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text("")
    for bad in ("", "..", "../x", "a/b", ".hidden"):
        with pytest.raises(InstallError, match="invalid package digest"):
            install_python_package(tmp_path, root=tmp_path / "envs", digest=bad)


def test_failed_install_leaves_no_marker_and_names_log(tmp_path: Path) -> None:
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    src = tmp_path / "proj"
    counter = intree_project(src, "failpkg", fail=True)
    root = tmp_path / "envs"
    for attempt in (1, 2):  # failures are not remembered: the second call runs again
        with pytest.raises(InstallError) as info:
            install_python_package(src, root=root, digest="f00")
        log = root / "f00" / LOG_NAME
        assert str(log) in str(info.value)
        assert "BACKEND-FAILS-ON-PURPOSE" in str(info.value)  # the log tail is quoted
        assert "BACKEND-FAILS-ON-PURPOSE" in log.read_text()
        assert not (root / "f00" / MARKER_NAME).exists()
        assert not (root / "f00" / "deps").exists()
        assert builds(counter) == attempt


def test_concurrent_installs_of_same_digest_run_installer_once(tmp_path: Path) -> None:
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    src = tmp_path / "proj"
    counter = intree_project(src, "concpkg", sleep=1.0)
    root = tmp_path / "envs"
    results: list[InstalledPackage] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def worker() -> None:
        start.wait()
        try:
            results.append(install_python_package(src, root=root, digest="cc"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert builds(counter) == 1
    assert log_runs(root / "cc") == 1
    out = run_python(results[0], "import concpkg; print(concpkg.__file__)", tmp_path)
    assert out == str(results[0].deps / "concpkg/__init__.py")


def _python_with_pip() -> str | None:
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-m", "pip", "--version"], capture_output=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return candidate
    return None


def test_pip_is_used_when_uv_is_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = _python_with_pip()
    if python is None:
        pytest.skip("no Python with pip on this machine")
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    src = tmp_path / "proj"
    counter = intree_project(src, "pippkg")
    uv = resolve_tool("uv")  # what a cluster started with this PATH finds
    assert uv is None
    pkg = install_python_package(src, root=tmp_path / "envs", digest="99", python=python, uv=uv)
    assert json.loads((tmp_path / "envs/99" / MARKER_NAME).read_text())["installer"] == "pip"
    assert builds(counter) == 1
    assert (pkg.deps / "pippkg" / "__init__.py").is_file()


def test_neither_uv_nor_pip_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{sys.executable} has pip")
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    src = tmp_path / "proj"
    intree_project(src, "nopkg")
    with pytest.raises(InstallError, match=r"install uv .*ensurepip"):
        install_python_package(
            src, root=tmp_path / "envs", digest="00", python=sys.executable, uv=resolve_tool("uv")
        )
    assert not (tmp_path / "envs/00" / MARKER_NAME).exists()


def test_package_digest_streams_large_files(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "pkg.tar.gz"
    path.write_bytes(data)
    assert package_digest(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert package_digest(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def _wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of ``name`` (module ``name`` with ``VERSION``), made here."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for rel, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


def test_code_edits_reuse_one_environment_per_dependency_set(tmp_path: Path) -> None:
    """Issue 18, case 8: the environment is keyed by the dependencies and the Python
    version, not by the code; two edits of the code install the dependencies once."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    wheel = _wheel(tmp_path, "flame_tinydep", "1.2")
    root = tmp_path / "envs"
    pkgs = []
    for edit in (1, 2):
        src = tmp_path / f"edit{edit}"
        src.mkdir()
        (src / "main.py").write_text(f"EDIT = {edit}\n")
        (src / "pyproject.toml").write_text(
            GENERATED.replace(
                "dependencies = []", f'dependencies = ["flame_tinydep @ {wheel.as_uri()}"]'
            )
        )
        pkgs.append(install_python_package(src, root=root, digest=f"e{edit}"))
    envs = sorted(p.name for p in root.iterdir() if p.name.startswith("env-"))
    assert len(envs) == 1  # one environment for both versions of the code
    assert log_runs(root / envs[0]) == 1  # installed once
    assert pkgs[0].env["FLAME_PACKAGE_ENV"] == pkgs[1].env["FLAME_PACKAGE_ENV"]
    for edit, pkg in enumerate(pkgs, 1):
        code = "import flame_tinydep, main; print(flame_tinydep.VERSION, main.EDIT)"
        assert run_python(pkg, code, tmp_path) == f"1.2 {edit}"
    size = sum(f.stat().st_size for f in (root / envs[0]).rglob("*") if f.is_file())
    assert size < 1_000_000  # the dependencies, once; the code is not copied into it
