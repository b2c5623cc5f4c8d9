"""A client on one Python and instances on another (issue 21, item 3).

The local cluster runs on this interpreter; the client is a program on another
Python version, in a venv with the workspace's flamepy.  Code pickled by
reference (a module of the package) runs; code pickled by value (a lambda of
``__main__``) is refused with an error that names both versions and the fixes.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flame_testkit import ClusterThread

FLAMEPY = Path(__file__).resolve().parents[1]
THIS = f"{sys.version_info[0]}.{sys.version_info[1]}"

PROGRAM = """
import sys
from flamepy import Runner
import job

with Runner("pyvers") as rr:
    print("by-reference", rr.service(job.python)().get(120), flush=True)
    try:
        rr.service(lambda: 1)().get(120)
        print("by-value ran", flush=True)
    except Exception as exc:
        print("by-value", type(exc).__name__, " ".join(str(exc).split()), flush=True)
"""

JOB = """
import sys


def python():
    return "%d.%d" % sys.version_info[:2]
"""


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def other_python() -> tuple[str, str] | None:
    """An interpreter of another minor version on this machine (3.12 first)."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for version in ("3.12", "3.11", "3.13", "3.10"):
        if version == THIS:
            continue
        candidates = [shutil.which(f"python{version}") or ""]
        candidates += sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"))
        candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
        for candidate in candidates:
            if candidate and _version_of(candidate) == version:
                return candidate, version
    return None


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    found = other_python()
    if found is None:
        pytest.skip(f"no Python other than {THIS} on this machine")
    interpreter, version = found
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    steps = [
        ["uv", "venv", "-q", "--python", interpreter, str(venv)],
        ["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(FLAMEPY)],
    ]
    for step in steps:
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"cannot make a Python {version} client venv: {done.stderr[-500:]}")
    return str(venv / "bin" / "python"), version


def test_by_value_code_from_another_python_is_refused_clearly(
    client_python: tuple[str, str], flame_env: ClusterThread, tmp_path: Path
) -> None:
    python, version = client_python
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text(PROGRAM)
    (project / "job.py").write_text(JOB)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [python, "main.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    # By reference: the client's Python {version}, the instance's {THIS}: it runs.
    assert lines["by-reference"] == THIS
    refused = lines["by-value"]
    assert f"Python {version} (the client)" in refused, refused
    assert f"this instance runs Python {THIS}" in refused, refused
    assert f"python_version='{version}'" in refused and "flame-local up" in refused, refused
    assert "Traceback" not in refused  # a verdict, not a crash
