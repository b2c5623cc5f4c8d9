"""``flame-local up`` and ``flame-local run`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flamepy import Connection

CLI = [sys.executable, "-m", "flame_testkit._cli"]

CLIENT = """
import os, flamepy
ssn = flamepy.create_session("flmtest")
print(os.environ["FLAME_ENDPOINT"], ssn.invoke(b"via-run", timeout=60).decode())
ssn.close()
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["HOME"] = str(tmp_path)
    return env


def test_run_sets_the_endpoint_and_returns_the_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "run", "--", sys.executable, "-c", CLIENT],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    endpoint, output = proc.stdout.split()
    assert endpoint.startswith("http://127.0.0.1:")
    assert output == "echo:via-run"
    failing = subprocess.run(
        [*CLI, "run", "--", sys.executable, "-c", "raise SystemExit(3)"],
        env=_env(tmp_path),
        timeout=120,
    )
    assert failing.returncode == 3


def test_run_without_a_command_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "run"], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "no command given" in proc.stderr


def test_run_reports_a_missing_program(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "run", "--", "/nonexistent/prog"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 127 and "/nonexistent/prog" in proc.stderr


def test_up_prints_endpoints_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "up", "--capacity", "1"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("FLAME_ENDPOINT=http://127.0.0.1:")
        with Connection.connect(line.split("=", 1)[1]) as conn:
            assert {a.name for a in conn.list_applications()} >= {"flmrun", "flmtest"}
            assert conn.list_nodes()[0].capacity.cpu == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_invalid_capacity_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        subprocess.run(
            [*CLI, "up", "--capacity", "0"],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    assert "--capacity must be at least 1" in info.value.stderr
