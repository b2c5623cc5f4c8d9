"""Ctrl-C during a blocking wait (case 4 of the Runner correctness issue).

A program on the embedded cluster waits for three 60 s calls on two slots (two
running, one waiting).  One SIGINT: within 2 s it raises KeyboardInterrupt, one
line says that the three calls sent are left to the cluster (a session with a
running task cannot be closed, and Flame cannot cancel a task), nothing of
asyncio's complains, and once it has exited no instance process, package tarball
or cluster directory is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROGRAM = """
import os, sys, time
from flamepy import Runner
import userlib

with Runner("interrupted") as rr:
    nap = rr.service(userlib.nap)
    futures = [nap(60, sys.argv[1]) for _ in range(3)]
    while len(os.listdir(sys.argv[1])) < 2:  # two are running
        time.sleep(0.05)
    print("waiting", flush=True)
    rr.get(futures)
"""

USERLIB = """
import os, time

def nap(seconds, folder):
    open(os.path.join(folder, str(os.getpid())), "w").close()
    time.sleep(seconds)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # not a zombie
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc")
def test_case4_ctrl_c_stops_the_program_within_2_seconds(tmp_path: Path) -> None:
    project, pids, tmp = tmp_path / "project", tmp_path / "pids", tmp_path / "tmp"
    for folder in (project, pids, tmp):
        folder.mkdir()
    (project / "main.py").write_text(PROGRAM)
    (project / "userlib.py").write_text(USERLIB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp), FLAME_LOCAL_CAPACITY="2")
    proc = subprocess.Popen(
        [sys.executable, "main.py", str(pids)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == "waiting"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        lines = []
        for line in proc.stderr:  # the traceback is printed before the exit's cleanup
            lines.append(line)
            if line.startswith("KeyboardInterrupt"):
                raised = time.monotonic() - started
                break
        rest = proc.communicate(timeout=30)[1]
        stderr = "".join(lines) + rest
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert stderr.count("KeyboardInterrupt") == 1, stderr
    assert "interrupted: 3 call(s) sent to the cluster are left to finish there" in stderr
    for noise in ("Task was destroyed", "no running event loop", "Exception ignored"):
        assert noise not in stderr, stderr
    assert raised < 2.5, raised  # the Runner gives its cleanup 2 s
    assert elapsed < 10, elapsed  # then the embedded cluster stops (2 s grace for instances)
    instances = [int(p.name) for p in pids.iterdir()]
    assert len(instances) == 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in instances):
        assert time.monotonic() < deadline, "an instance outlived the program"
        time.sleep(0.1)
    assert sorted(p.name for p in tmp.iterdir()) == []  # no tarball, no cluster dirs


USERLIB_INLINE = """
import time


def nap(seconds):
    time.sleep(seconds)
    return seconds
"""


def test_case4_cancel_takes_back_a_call_that_is_not_in_a_task_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flame_env: object
) -> None:
    import importlib
    import uuid

    from flamepy import Runner, TaskCancelledError

    name = f"cancellib_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USERLIB_INLINE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    lib = importlib.import_module(name)
    try:
        with Runner(f"cancel-{uuid.uuid4().hex[:6]}") as rr:
            nap = rr.service(lib.nap, autoscale=False)  # one instance: calls queue up
            assert nap(0).get(60) == 0
            running = nap(2)
            waiting = []
            for _ in range(2):  # two tasks may wait for the instance ...
                time.sleep(0.3)
                waiting.append(nap(0.01))
            time.sleep(0.3)
            queued = nap(0.01)  # ... so this one stays in the client's queue
            time.sleep(0.1)
            assert running.cancel() is False  # its task exists: Flame cannot cancel it
            assert waiting[0].cancel() is False
            assert queued.cancel() is True
            with pytest.raises(TaskCancelledError):
                queued.get(60)
            assert running.get(60) == 2
            assert [f.get(60) for f in waiting] == [0.01, 0.01]
    finally:
        sys.modules.pop(name, None)
