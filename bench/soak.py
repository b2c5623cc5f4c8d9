"""Soak: many calls through ``flame-local up``; resources must stay flat.

Run: ``uv run python bench/soak.py [--calls 1000000] [--stateful 20000]``.
Starts its own ``flame-local up``, then runs the calls in rounds from one Runner
client: small function calls (``add(i, 1)``, every result checked) and calls of
one stateful object (``Counter.add``, the running total checked).  After a
warm-up round and after the last, it samples the RSS, open file descriptors and
threads of the client and of the cluster process (with its instances), and
writes them to ``bench/results/soak-<timestamp>.json``.  Exits non-zero on a
wrong result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROUND = 20_000

LIB = """
def add(a, b):
    return a + b


class Counter:
    def __init__(self):
        self.total = 0

    def add(self, n):
        self.total += n
        return self.total
"""


def _status(pid: int) -> dict[str, int]:
    """RSS (KiB), open fds and threads of ``pid`` from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_kib": fields["VmRSS"], "fds": fds, "threads": fields["Threads"]}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _sample(server: int) -> dict[str, Any]:
    return {
        "client": _status(os.getpid()),
        "server": _status(server),
        "instances": [_status(p) for p in _children(server)],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--stateful", type=int, default=20_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flame-soak-"))
    project = work / "project"
    project.mkdir()
    (project / "soaklib.py").write_text(LIB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    up = subprocess.Popen(
        [sys.executable, "-m", "flame_testkit._cli", "up", "--work-dir", str(work / "cluster")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert up.stdout is not None
        while "FLAME_CACHE_ENDPOINT" not in os.environ:
            key, _, value = up.stdout.readline().strip().partition("=")
            if not key:
                raise SystemExit("flame-local up did not start")
            os.environ[key] = value
        os.chdir(project)
        sys.path.insert(0, str(project))
        import soaklib

        from flamepy import Runner

        report: dict[str, Any] = {"calls": args.calls, "stateful": args.stateful}
        wrong = 0
        with Runner("soak") as rr:
            add = rr.service(soaklib.add)
            counter = rr.service(soaklib.Counter)
            total = 0

            def round_of(start: int, count: int, stateful: int) -> int:
                nonlocal total
                bad = 0
                futures = [add(i, 1) for i in range(start, start + count)]
                adds = [counter.add(1) for _ in range(stateful)]
                for i, value in zip(range(start, start + count), rr.get(futures), strict=True):
                    bad += value != i + 1
                for value in rr.get(adds):
                    total += 1
                    bad += value != total
                return bad

            per_round = max(1, args.stateful * ROUND // max(args.calls, 1))
            wrong += round_of(0, ROUND, per_round)  # warm-up
            report["start"] = _sample(up.pid)
            started = time.perf_counter()
            done, stateful_done = ROUND, per_round
            while done < args.calls:
                count = min(ROUND, args.calls - done)
                extra = min(per_round, max(0, args.stateful - stateful_done))
                wrong += round_of(done, count, extra)
                done += count
                stateful_done += extra
            report["seconds"] = round(time.perf_counter() - started, 1)
            report["end"] = _sample(up.pid)
            report["stateful_done"] = stateful_done
        report["wrong"] = wrong
        stamp = time.strftime("%Y%m%dT%H%M%S")
        out = HERE / "results" / f"soak-{stamp}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        print(f"written to {out}")
        return 1 if wrong else 0
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
