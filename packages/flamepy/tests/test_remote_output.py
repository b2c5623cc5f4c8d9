"""Remote output (issue 19, item 1): what remote code prints and logs reaches the
client as it happens, prefixed with the service and the instance, in order for
each instance; off with ``output=False`` or ``FLAME_OUTPUT=0``.

The programs run as real client processes against the session's local cluster,
so what they print is what a user would see on their terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flame_testkit import ClusterThread

LIB = """
import logging, os, sys, time

log = logging.getLogger("lib")

def shout(i):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
    log.warning("logged %d", i)
    return i * 10

def shell(i):
    os.system(f"echo from-a-subprocess {i}")
    return i

def slow(i):
    print(f"slow {i}")
    time.sleep(0.05)
    return os.getpid()

def flood(lines):
    chunk = "x" * 100
    for i in range(lines):
        print(chunk, i)
    return lines

def ticker(seconds):
    print("tick before the wait")
    time.sleep(seconds)
    return "finished"

class Counter:
    def __init__(self):
        print("counter built")
        self.n = 0

    def add(self, k):
        self.n += k
        print("n is", self.n)
        return self.n
"""


def _run(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "lib.py").write_text(LIB)
    program = "import lib\nfrom flamepy import Runner\n" + body
    (project / "main.py").write_text(program)
    full = {k: v for k, v in os.environ.items() if k != "FLAME_OUTPUT"}
    full.update(env)
    return subprocess.run(
        [sys.executable, "main.py"], cwd=project, env=full, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip


def _prefixed(text: str, label: str) -> list[tuple[int, str]]:
    """(pid, line) of each line ``(label pid=N) line``."""
    found = []
    for line in text.splitlines():
        m = re.fullmatch(rf"\({re.escape(label)} pid=(\d+)\) (.*)", line)
        if m:
            found.append((int(m.group(1)), m.group(2)))
    return found


def test_print_stderr_and_log_records_reach_the_client_prefixed(
    tmp_path: Path, flame_env: ClusterThread
) -> None:
    proc = _run(
        tmp_path,
        """
with Runner("output") as rr:
    shout = rr.service(lib.shout, autoscale=False)
    print("results", [f.get() for f in [shout(i) for i in range(20)]])
    shell = rr.service(lib.shell)
    print("shell", shell(7).get())
""",
    )
    assert proc.returncode == 0, proc.stderr
    assert "results [0, 10, 20" in proc.stdout
    out = _prefixed(proc.stdout, "shout")
    assert [line for _, line in out] == [f"out {i}" for i in range(20)]
    assert len({pid for pid, _ in out}) == 1 and out[0][0] != os.getpid()
    err = _prefixed(proc.stderr, "shout")
    assert [line for _, line in err if line.startswith("err")] == [f"err {i}" for i in range(20)]
    logged = [line for _, line in err if "logged" in line]
    assert logged == [f"WARNING lib: logged {i}" for i in range(20)]
    # output written by a subprocess of the call (fd 1, not sys.stdout) is caught too
    assert [line for _, line in _prefixed(proc.stdout, "shell")] == ["from-a-subprocess 7"]
    # the instance's own log records stay in its log file
    assert not [line for _, line in err if "flmrun" in line], err


def test_lines_of_each_instance_arrive_in_order(tmp_path: Path, flame_env: ClusterThread) -> None:
    proc = _run(
        tmp_path,
        """
with Runner("output", local_capacity=2) as rr:
    slow = rr.service(lib.slow)
    pids = rr.get([slow(i) for i in range(60)])
    print("instances", len(set(pids)))
""",
    )
    assert proc.returncode == 0, proc.stderr
    lines = _prefixed(proc.stdout, "slow")
    assert sorted(int(line.split()[1]) for _, line in lines) == list(range(60))
    for pid in {pid for pid, _ in lines}:
        # each instance takes calls in submission order, so its lines rise
        mine = [int(line.split()[1]) for p, line in lines if p == pid]
        assert mine == sorted(mine), (pid, mine)


def test_a_class_prints_its_construction_once(tmp_path: Path, flame_env: ClusterThread) -> None:
    proc = _run(
        tmp_path,
        """
with Runner("output") as rr:
    c = rr.service(lib.Counter)
    print("total", c.add(2).get(), c.add(3).get())
""",
    )
    assert proc.returncode == 0, proc.stderr
    assert [line for _, line in _prefixed(proc.stdout, "Counter")] == [
        "counter built",
        "n is 2",
        "n is 5",
    ]


def test_output_rolls_over_to_new_objects_without_losing_a_line(
    tmp_path: Path, flame_env: ClusterThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each object takes 3 patches here (900 on a real run): 40 calls, 40 patches.
    # Instances inherit the environment of the cluster (this process) at launch.
    monkeypatch.setenv("FLMRUN_OUTPUT_ROLL", "3")
    proc = _run(
        tmp_path,
        """
with Runner("output") as rr:
    shout = rr.service(lib.shout, autoscale=False)
    for i in range(40):
        shout(i).get()
""",
    )
    assert proc.returncode == 0, proc.stderr
    assert [line for _, line in _prefixed(proc.stdout, "shout")] == [f"out {i}" for i in range(40)]


def test_a_flood_of_output_is_cut_and_says_so(
    tmp_path: Path, flame_env: ClusterThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 300,000 lines (33 MB) in one call, with 64 KiB of output allowed to wait: the
    # call still returns, the client is told how many lines were dropped, and what
    # was kept is in order.
    monkeypatch.setenv("FLMRUN_OUTPUT_BUFFER", str(64 * 1024))
    proc = _run(
        tmp_path,
        """
with Runner("output") as rr:
    flood = rr.service(lib.flood)
    print("returned", flood(300_000).get())
""",
    )
    assert proc.returncode == 0, proc.stderr
    assert "returned 300000" in proc.stdout
    kept = [int(line.split()[1]) for _, line in _prefixed(proc.stdout, "flood")]
    assert kept and kept == sorted(kept) and len(kept) < 300_000
    dropped = re.findall(r"\[flmrun: (\d+) line\(s\) of output dropped\]", proc.stderr)
    assert dropped, proc.stderr[-2000:]
    assert len(kept) + sum(int(n) for n in dropped) == 300_000


def test_output_is_off_with_the_flag_or_the_variable(
    tmp_path: Path, flame_env: ClusterThread
) -> None:
    body = """
with Runner("output"{option}) as rr:
    shout = rr.service(lib.shout)
    print("results", rr.get([shout(i) for i in range(3)]))
"""
    off = _run(tmp_path, body.format(option=", output=False"))
    assert off.returncode == 0, off.stderr
    assert "results [0, 10, 20]" in off.stdout
    assert "pid=" not in off.stdout and "pid=" not in off.stderr
    by_env = _run(tmp_path, body.format(option=""), FLAME_OUTPUT="0")
    assert by_env.returncode == 0 and "pid=" not in by_env.stdout + by_env.stderr
    on = _run(tmp_path, body.format(option=""))
    assert on.returncode == 0 and "(shout pid=" in on.stdout


def test_flmctl_shows_an_instance_log(
    tmp_path: Path, flame_env: ClusterThread, capsys: pytest.CaptureFixture[str]
) -> None:
    from flamepy._flmctl import main

    proc = _run(
        tmp_path,
        """
with Runner("output", output=False) as rr:
    print(rr.service(lib.shout)(424242).get())
""",
    )
    assert proc.returncode == 0, proc.stderr
    endpoint = flame_env.endpoint
    assert main(["--endpoint", endpoint, "logs"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["EXECUTOR", "BYTES", "LAST", "WRITTEN"]
    shown = {}
    for row in listing[1:]:
        executor = row.split()[0]
        assert main(["--endpoint", endpoint, "logs", executor, "--tail", "0"]) == 0
        shown[executor] = capsys.readouterr().out
    # the instance that ran the call has its print in its .out, and its stderr in .err
    ran = [text for text in shown.values() if "out 424242" in text]
    assert len(ran) == 1 and "err 424242" in ran[0] and ".out <==" in ran[0]
    # a prefix names it too; an unknown id and a remote cluster are refused, saying why
    executor = next(e for e, text in shown.items() if "out 424242" in text)
    assert main(["--endpoint", endpoint, "logs", executor[:12], "--tail", "1"]) == 0
    assert "==> " in capsys.readouterr().out
    assert main(["--endpoint", endpoint, "logs", "no-such-executor"]) == 1
    assert "no logs of an executor 'no-such-executor'" in capsys.readouterr().err
    assert main(["--endpoint", "http://127.0.0.1:9", "logs"]) == 1
    assert "keeps them on each executor's node" in capsys.readouterr().err


def test_lines_arrive_while_the_call_still_runs(tmp_path: Path, flame_env: ClusterThread) -> None:
    proc = _run(
        tmp_path,
        """
import io, sys, time

class Recorder(io.TextIOBase):
    def __init__(self):
        self.seen = []

    def write(self, text):
        self.seen.append((time.monotonic(), text))
        return len(text)

recorder, real = Recorder(), sys.stdout
sys.stdout = recorder
with Runner("output") as rr:
    call = rr.service(lib.ticker)(3)
    value = call.get()
    returned = time.monotonic()
sys.stdout = real
arrived = next(t for t, text in recorder.seen if "tick before the wait" in text)
print(value, round(returned - arrived, 1))
""",
    )
    assert proc.returncode == 0, proc.stderr
    value, ahead = proc.stdout.split()
    # the line came while the call slept, seconds before its result
    assert value == "finished" and float(ahead) >= 1.5, proc.stdout
