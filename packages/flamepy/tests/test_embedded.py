"""With no endpoint configured, flamepy starts a local cluster in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """
import logging, flamepy
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
ssn = flamepy.create_session("flmping")
print(ssn.invoke(b"embedded", timeout=60))
ssn.close()
"""

NO_TESTKIT = """
import sys
sys.modules["flame_testkit"] = None  # as if flame-testkit were not installed
import flamepy
try:
    flamepy.list_applications()
except flamepy.ConfigError as exc:
    print("ConfigError:", exc)
"""


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["HOME"] = str(home)  # no ~/.flame/flame.yaml there
    return env


def _run(code: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=_clean_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_endpoint_starts_an_embedded_cluster(tmp_path: Path) -> None:
    proc = _run(SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "b'embedded'"
    said = [ln for ln in proc.stderr.splitlines() if "embedded local cluster" in ln]
    assert len(said) == 1 and "ConfigWarning: no Flame endpoint is configured" in said[0]
    # once, on stderr, whether logging is configured or not
    plain = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("logging.basicConfig", "dict")],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.count("embedded local cluster") == 1


RUNNER = """
from flamepy import Runner
with Runner("once") as rr:
    print(rr.service(abs)(-2).get())
"""


def test_a_runner_on_the_embedded_cluster_says_so_once(tmp_path: Path) -> None:
    # A Runner resolves the Frontend and then the cache endpoint: one warning, not
    # two, and it names flamepy rather than the worker thread it was raised in.
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], cwd=tmp_path, env=_clean_env(tmp_path),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"
    said = [ln for ln in proc.stderr.splitlines() if "embedded local cluster" in ln]
    assert len(said) == 1 and said[0].startswith("flamepy:0: ConfigWarning: no Flame endpoint")


def test_no_endpoint_without_testkit_says_how_to_configure(tmp_path: Path) -> None:
    proc = _run(NO_TESTKIT, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ConfigError: no Flame endpoint is configured" in proc.stdout
    assert "FLAME_ENDPOINT" in proc.stdout and "flame.yaml" in proc.stdout


KILLED_CLIENT = """
import flamepy, json, sys, time
ssn = flamepy.create_session("flmexec")  # the script's parent is the instance
task = {"language": "python", "code": "import os; print(os.getppid(), end='')"}
reply = json.loads(ssn.invoke(json.dumps(task).encode(), timeout=60))
print(bytes(reply["data"]).decode(), flush=True)
time.sleep(120)
"""


def _owner(path: Path) -> int | None:
    try:
        return int((path / "OWNER").read_text())
    except (OSError, ValueError):
        return None


def test_instances_die_with_a_killed_client(tmp_path: Path) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT],
        env=_clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        instance = int(proc.stdout.readline())
        os.kill(instance, 0)  # alive while the client is
        proc.send_signal(signal.SIGKILL)  # no atexit hooks run
        proc.wait(30)
        deadline = time.monotonic() + 15
        while True:
            try:
                os.kill(instance, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "the instance outlived its killed client"
            time.sleep(0.1)
        # Its cache's transfer directory in shared memory is removed by the next cache.
        from flame_testkit._cache_local import default_parent, sweep_orphans

        parent = Path(default_parent() or tempfile.gettempdir())
        left = [p for p in parent.glob("flame-cache-*") if _owner(p) == proc.pid]
        assert len(left) == 1
        assert left[0] in sweep_orphans(parent)
        assert not left[0].exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


CAPACITY = """
import flamepy
print(flamepy.list_nodes()[0].capacity.cpu)
"""


def test_the_embedded_capacity_comes_from_flame_local_capacity(tmp_path: Path) -> None:
    env = {**_clean_env(tmp_path), "FLAME_LOCAL_CAPACITY": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", CAPACITY], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"
    env["FLAME_LOCAL_CAPACITY"] = "lots"
    bad = subprocess.run(
        [sys.executable, "-c", CAPACITY], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0
    assert "FLAME_LOCAL_CAPACITY='lots'" in bad.stderr and "whole number" in bad.stderr
