"""Case 4: waits on a stopped cluster or a stopped instance are bounded.

A SIGSTOPped ``flame-local up`` used to leave a client's ``get()`` waiting for
more than 90 s, and a SIGSTOPped instance made leaving ``with Runner`` hang until
SIGCONT.  With keepalive pings both ways, a peer that stops answering is dropped
and the waits end with a typed error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from _chaos import LocalUp

PROGRAM = """
import os, sys, time
from flamepy import Runner, FlameError
import lib

with Runner("stopped") as rr:
    nap = rr.service(lib.nap)
    call = nap(60, sys.argv[1])
    while not os.listdir(sys.argv[1]):
        time.sleep(0.05)
    print("running", flush=True)
    try:
        call.get()
        print("returned", flush=True)
    except FlameError as exc:
        print("raised", type(exc).__name__, flush=True)
    print("left", flush=True) if sys.argv[2] == "stop-cluster" else None
    sys.stdout.flush()
    os._exit(0) if sys.argv[2] == "stop-cluster" else None
print("left", flush=True)
"""

LIB = """
import os, time

def nap(seconds, folder):
    open(os.path.join(folder, str(os.getpid())), "w").close()
    time.sleep(seconds)
    return seconds
"""


def _project(tmp_path: Path) -> tuple[Path, Path]:
    project, pids = tmp_path / "project", tmp_path / "pids"
    for folder in (project, pids):
        folder.mkdir()
    (project / "main.py").write_text(PROGRAM)
    (project / "lib.py").write_text(LIB)
    return project, pids


def _lines_within(proc: object, count: int, timeout: float) -> list[str]:
    import selectors

    stream = proc.stdout  # type: ignore[attr-defined]
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {lines} within {timeout:g}s"
        if selector.select(left):
            line = stream.readline()
            if not line:
                break
            lines.append(line.strip())
    return lines


def test_case4_a_client_waiting_on_a_stopped_cluster_gets_an_error(
    local_up: LocalUp, tmp_path: Path
) -> None:
    project, pids = _project(tmp_path)
    client = local_up.client("main.py", str(pids), "stop-cluster", cwd=project)
    assert _lines_within(client, 1, 60) == ["running"]
    os.kill(local_up.proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        lines = _lines_within(client, 2, 30)
    finally:
        os.kill(local_up.proc.pid, signal.SIGCONT)
    assert lines[0].startswith("raised"), lines
    assert time.monotonic() - started < 30


def test_case4_leaving_the_runner_with_a_stopped_instance_is_bounded(
    local_up: LocalUp, tmp_path: Path
) -> None:
    project, pids = _project(tmp_path)
    client = local_up.client("main.py", str(pids), "stop-instance", cwd=project)
    assert _lines_within(client, 1, 60) == ["running"]
    instance = int(next(pids.iterdir()).name)
    os.kill(instance, signal.SIGSTOP)
    try:
        lines = _lines_within(client, 2, 40)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(instance, signal.SIGCONT)
    assert lines[0].startswith("raised"), lines
    assert lines[1] == "left"
