"""Helpers of the chaos suite (its fixtures are in conftest.py).

The chaos suite: each fault of the reliability issue as a test, plus a
randomized run.  Each test gets its own ``flame-local up`` process (tests stop
and kill clusters), with keepalive pings every second (``FLAME_KEEPALIVE``) so a
stopped peer is noticed in seconds.  ``CHAOS_SCALE=full`` runs the full sizes;
the default (``quick``) is what CI runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

UP_TIMEOUT = 60.0
KEEPALIVE = "1"
FULL = os.environ.get("CHAOS_SCALE", "quick") == "full"


def scale(quick: int, full: int) -> int:
    return full if FULL else quick


@dataclass
class LocalUp:
    """A ``flame-local up`` process and the environment its clients need."""

    proc: subprocess.Popen[str]
    env: dict[str, str]
    work: Path
    extra: list[subprocess.Popen[str]] = field(default_factory=list)

    def client(self, *args: str, cwd: Path, **kwargs: object) -> subprocess.Popen[str]:
        """A client program (``python args...``) of this cluster."""
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **kwargs,  # type: ignore[call-overload]
        )
        self.extra.append(proc)
        return proc

    def instances(self) -> list[int]:
        """Pids of the instance processes this cluster launched (its children)."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in children.split()]


def start(work: Path, env: dict[str, str]) -> LocalUp:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flame_testkit._cli", "up", "--work-dir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    deadline = time.monotonic() + UP_TIMEOUT
    while "FLAME_CACHE_ENDPOINT" not in printed:
        assert time.monotonic() < deadline, "flame-local up did not start"
        line = proc.stdout.readline().strip()
        if not line:
            proc.kill()
            raise RuntimeError(f"flame-local up failed: {proc.communicate()[1]}")
        key, _, value = line.partition("=")
        printed[key] = value
    client_env = {**env, **printed}
    return LocalUp(proc, client_env, work)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
