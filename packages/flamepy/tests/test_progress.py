"""Progress bars (issue 19, item 2): on a terminal, waits on many calls and the
packaging of a large project show a bar; piped, or with FLAME_PROGRESS=0, nothing
is drawn."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from flame_testkit import ClusterThread

PROGRAM = """
import sys
from flamepy import Runner
import lib

with Runner("progress") as rr:
    add = rr.service(lib.add)
    futures = [add(i, 1) for i in range(150)]
    assert rr.get(futures) == [i + 1 for i in range(150)]
print("done", flush=True)
"""

LIB = """
import time

def add(a, b):
    time.sleep(0.002)
    return a + b
"""


ASYNC_PROGRAM = """
import asyncio
from flamepy import AsyncRunner
import lib

async def main():
    async with AsyncRunner("progress") as rr:
        add = rr.service(lib.add)
        futures = [add(i, 1) for i in range(150)]
        assert await rr.get(futures) == [i + 1 for i in range(150)]
    print("done", flush=True)

asyncio.run(main())
"""


def _project(tmp_path: Path, big: bool, program: str = PROGRAM) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text(program)
    (project / "lib.py").write_text(LIB)
    if big:
        (project / "data.bin").write_bytes(os.urandom(20 * 1024 * 1024))
    return project


def _on_a_terminal(project: Path, env: dict[str, str]) -> str:
    """Run the program with stderr (and stdout) on a pseudo-terminal; its output."""
    leader, follower = pty.openpty()
    # A terminal of 24 rows and 120 columns (a new pseudo-terminal has none).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "main.py"], cwd=project, env=env, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the program closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLAME_PROGRESS"}
    env.update(extra or {})
    return env


@pytest.mark.skipif(sys.platform != "linux", reason="pty")
def test_a_wait_on_many_calls_shows_a_bar_on_a_terminal_only(
    tmp_path: Path, flame_env: ClusterThread
) -> None:
    project = _project(tmp_path, big=False)
    shown = _on_a_terminal(project, _env())
    assert "flame calls" in shown and "/150 [" in shown, shown[-2000:]
    assert "done" in shown
    piped = subprocess.run(
        [sys.executable, "main.py"], cwd=project, env=_env(), capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert "flame calls" not in piped.stderr and "done" in piped.stdout
    off = _on_a_terminal(project, _env({"FLAME_PROGRESS": "0"}))
    assert "flame calls" not in off and "done" in off


@pytest.mark.skipif(sys.platform != "linux", reason="pty")
def test_packaging_a_large_project_shows_a_bar(tmp_path: Path, flame_env: ClusterThread) -> None:
    project = _project(tmp_path, big=True)
    shown = _on_a_terminal(project, _env({"XDG_CACHE_HOME": str(tmp_path / "cache")}))
    assert "packaging" in shown and "uploading" in shown, shown[-2000:]


@pytest.mark.skipif(sys.platform != "linux", reason="pty")
def test_an_async_wait_on_many_calls_shows_a_bar_too(
    tmp_path: Path, flame_env: ClusterThread
) -> None:
    project = _project(tmp_path, big=False, program=ASYNC_PROGRAM)
    shown = _on_a_terminal(project, _env())
    assert "flame calls" in shown and "/150 [" in shown, shown[-2000:]
    off = _on_a_terminal(project, _env({"FLAME_PROGRESS": "0"}))
    assert "flame calls" not in off and "done" in off
