"""A client killed with SIGKILL leaks nothing (issue 20, case 5).

A Runner program with a call running, a stateful object and a put object is
killed with SIGKILL.  The local cluster sees that the process owning the
Runner's lease is gone: its sessions close, its instances stop, its application
and cache objects go; the next Runner removes its packaging directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flamepy
import flamepy._cache.client
from flame_testkit import ClusterThread
from flamepy import Runner

PROGRAM = """
import os, sys, time
from flamepy import Runner
import victimlib

with Runner("reaped") as rr:
    counter = rr.service(victimlib.Counter(0))
    counter.add(1).get(60)
    ref = rr.put_object(b"x" * 2_000_000)
    nap = rr.service(victimlib.nap)
    call = nap(120, sys.argv[1])
    while not os.listdir(sys.argv[1]):
        time.sleep(0.05)
    print(rr.application, flush=True)
    call.get()
"""

VICTIMLIB = """
import os, time


class Counter:
    def __init__(self, start):
        self.total = start

    def add(self, n):
        self.total += n
        return self.total


def nap(seconds, folder):
    open(os.path.join(folder, str(os.getpid())), "w").close()
    time.sleep(seconds)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {timeout:g}s"
        time.sleep(0.1)


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_case5_a_killed_client_leaks_nothing(
    tmp_path: Path,
    flame_env: ClusterThread,
    flame_connection: flamepy.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project, pids, tmp = tmp_path / "project", tmp_path / "pids", tmp_path / "tmp"
    for folder in (project, pids, tmp):
        folder.mkdir()
    (project / "main.py").write_text(PROGRAM)
    (project / "victimlib.py").write_text(VICTIMLIB)
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "main.py", str(pids)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        app = proc.stdout.readline().strip()
        assert app.startswith("reaped-"), proc.stderr.read() if proc.stderr else ""
        sessions = [s.id for s in flame_connection.list_sessions() if s.application == app]
        assert len(sessions) == 2
        assert [p.name for p in tmp.iterdir() if p.name.startswith("flame-runner-")]
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    instance = int(next(pids.iterdir()).name)
    _until("the running call's instance stops", lambda: not _alive(instance))
    _until("the application goes", lambda: flame_connection.get_application(app) is None)
    assert not [s for s in flame_connection.list_sessions() if s.application == app]
    _until(
        "its instances go",
        lambda: not [e for e in flame_connection.list_executors() if e.session_id in sessions],
    )
    cache = flamepy._cache.client.client_for(flame_env.cache_endpoint)
    assert cache.keys(f"{app}/") == []  # the put object and the object's state
    # The next Runner sweeps the killed one's packaging directory.
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.chdir(project)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with Runner("after-the-kill", dry_run=True):
        pass
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("flame-runner-")]
