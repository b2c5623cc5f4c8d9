"""The examples in ``examples/`` run as the README says, on the embedded cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _run(name: str, home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["HOME"] = str(home)  # no ~/.flame/flame.yaml: the embedded cluster
    proc = subprocess.run(
        [sys.executable, name], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("runner_hello.py", ["3", "4", "14", "28"]),
        ("runner_async.py", ["3", "7", "4", "14", "28", "[0, 1, 4, 9, 16]"]),
    ],
)
def test_runner_examples_print_what_they_say(
    example: str, expected: list[str], tmp_path: Path
) -> None:
    assert _run(example, tmp_path).splitlines() == expected


def test_hello_sessions(tmp_path: Path) -> None:
    lines = _run("hello_sessions.py", tmp_path).splitlines()
    assert lines == [
        "one task: b'hello'",
        "100 tasks, last output: b'task-99'",
        "a script's stdout: b'SHOUT'",
        "a failed task raises TaskFailedError: ExecError: the python script exited with "
        "code 1: something went wrong",
    ]


def test_runner_pi_estimates_pi(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "runner_pi.py", "20000", "6"],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 7 and lines[5].startswith("6/6 tasks done")
    assert 3.0 < float(lines[-1].split()[2]) < 3.3
