"""Another account on the machine cannot use, read or subvert a local cluster.

Each test starts a victim program (``_victim.py``: a Runner call, a secret in the
cache, a session with a task), then runs ``_attacker.py``, which drops to the
``nobody`` account and tries every attack of the security issue: register an
application (a command line) and run it, list sessions and tasks, list, read and
overwrite cached objects (with a pickle that runs a command when loaded),
unregister ``flmrun``, and read the cluster's files.  Against the embedded cluster
and ``flame-local up`` every attempt fails and the payloads' files never appear;
against ``flame-local up --no-auth`` on TCP the same attacker succeeds, which
shows that it would see the hole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="acting as another account (nobody) needs Linux and root",
)

HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "flame_testkit._cli"]
NETWORK_ATTACKS = (
    "register_app_and_run_it",
    "list_sessions",
    "list_tasks",
    "list_flights",
    "read_secret_object",
    "overwrite_object_with_pickle",
    "unregister_flmrun",
)
SOCKET_REFUSALS = ("Permission denied", "PermissionError", "UNAVAILABLE")
TOKEN_REFUSALS = ("UNAUTHENTICATED", "Unauthenticated", "access token")


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every account may enter (as /tmp is), for the attacker's HOME and
    the markers, so that only the cluster's own permissions stand in the way."""
    path = Path(tempfile.mkdtemp(prefix="flame-sec-"))
    path.chmod(0o755)
    (path / "home").mkdir(mode=0o755)
    (path / "markers").mkdir(mode=0o777)
    (path / "markers").chmod(0o777)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def _env(base: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["HOME"] = str(base / "home")
    env.update(extra)
    return env


class Victim:
    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_victim.py")],
            cwd=str(HERE),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the victim failed: {self._stop()}")
        self.info: dict[str, Any] = json.loads(line)
        assert self.info["runner_result"] == 42

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the victim failed: {self._stop()}")
        assert self.proc.wait(timeout=60) == 0
        result: dict[str, Any] = json.loads(line)
        return result

    def _stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self._stop()


def attack(base: Path, info: dict[str, Any], files: list[str]) -> dict[str, str]:
    args = {
        **{k: info[k] for k in ("endpoint", "cache_endpoint", "key", "version", "session_id")},
        "marker_app": str(base / "markers" / "app-ran"),
        "marker_pickle": str(base / "markers" / "pickle-ran"),
        "files": files,
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "_attacker.py"), json.dumps(args)],
        env=_env(base),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results: dict[str, str] = json.loads(proc.stdout)
    return results


def assert_all_denied(results: dict[str, str], reasons: tuple[str, ...]) -> None:
    for name, outcome in results.items():
        assert outcome.startswith("denied: "), f"{name} succeeded"
        if name in NETWORK_ATTACKS:
            assert any(r in outcome for r in reasons), f"{name}: {outcome}"
        else:  # a file or directory of the cluster
            assert "PermissionError" in outcome or "Permission denied" in outcome, outcome


def assert_no_payload_ran(base: Path, victim: Victim) -> None:
    after = victim.finish()
    assert after == {"secret": repr({"secret": "hunter2"}), "runner_after": 8}
    time.sleep(1)  # an instance launched for the evil application would have run by now
    assert sorted(p.name for p in (base / "markers").iterdir()) == []


class Up:
    """``flame-local up ARGS`` in its own process, and the variables it printed."""

    def __init__(self, base: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "up", "--capacity", "2", "--work-dir", str(base / "work"), *args],
            env=_env(base),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.env: dict[str, str] = {}
        while "FLAME_CACHE_ENDPOINT" not in self.env:
            line = self.proc.stdout.readline().strip()
            assert line, f"flame-local up exited: {self.stop()}"
            key, _, value = line.partition("=")
            self.env[key] = value
        if "--no-auth" not in args and ("--host" in args or "--port" in args):
            key, _, value = self.proc.stdout.readline().strip().partition("=")
            assert key == "FLAME_TOKEN_FILE"
            self.env[key] = value

    def files(self, base: Path) -> list[str]:
        work = base / "work"
        found = [str(work), str(work / "logs"), *map(str, sorted((work / "logs").iterdir()))]
        endpoint = self.env["FLAME_ENDPOINT"]
        if endpoint.startswith("unix://"):
            found.append(str(Path(endpoint[len("unix://") :]).parent))
        if "FLAME_TOKEN_FILE" in self.env:
            found += [self.env["FLAME_TOKEN_FILE"], str(Path(self.env["FLAME_TOKEN_FILE"]).parent)]
        return found

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def test_the_embedded_cluster_of_a_runner_program_is_out_of_reach(base: Path) -> None:
    victim = Victim(base, _env(base))
    try:
        info = victim.info
        assert info["endpoint"].startswith("unix:///")
        assert info["cache_endpoint"].startswith("grpc+unix:///")
        assert len(info["files"]) > 4  # the work dir, its logs, sockets, transfer files
        results = attack(base, info, info["files"])
        assert set(NETWORK_ATTACKS) <= set(results)
        assert_all_denied(results, SOCKET_REFUSALS)
        assert_no_payload_ran(base, victim)
    finally:
        victim.close()


def test_flame_local_up_is_out_of_reach(base: Path) -> None:
    up = Up(base)
    try:
        victim = Victim(base, _env(base, **up.env))
        try:
            results = attack(base, victim.info, up.files(base))
            assert_all_denied(results, SOCKET_REFUSALS)
            assert_no_payload_ran(base, victim)
        finally:
            victim.close()
    finally:
        up.stop()


def test_flame_local_up_on_tcp_refuses_requests_without_the_token(base: Path) -> None:
    up = Up(base, "--host", "127.0.0.1")
    try:
        victim = Victim(base, _env(base, **up.env))
        try:
            assert victim.info["endpoint"].startswith("http://127.0.0.1:")
            results = attack(base, victim.info, up.files(base))
            assert_all_denied(results, TOKEN_REFUSALS)
            assert_no_payload_ran(base, victim)
        finally:
            victim.close()
    finally:
        up.stop()


def test_the_same_attacks_succeed_with_no_auth(base: Path) -> None:
    """The control: with --no-auth on TCP the attacker gets through every door."""
    up = Up(base, "--host", "127.0.0.1", "--no-auth")
    try:
        victim = Victim(base, _env(base, **up.env))
        try:
            results = attack(base, victim.info, [])
            assert {name: results[name] for name in NETWORK_ATTACKS} == dict.fromkeys(
                NETWORK_ATTACKS, "ok"
            )
            after = victim.finish()
            assert after["secret"] == "0"  # os.system's exit status: the pickle ran
            deadline = time.monotonic() + 30
            markers = base / "markers"
            while {p.name for p in markers.iterdir()} != {"app-ran", "pickle-ran"}:
                assert time.monotonic() < deadline, sorted(markers.iterdir())
                time.sleep(0.2)
        finally:
            victim.close()
    finally:
        stderr = up.stop()
    assert "WARNING: --no-auth" in stderr
