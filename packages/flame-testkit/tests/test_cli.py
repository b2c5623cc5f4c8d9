"""``flame-local up`` and ``flame-local run`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from flamepy import Connection

CLI = [sys.executable, "-m", "flame_testkit._cli"]

CLIENT = """
import os, flamepy, stat
ssn = flamepy.create_session("flmping")
endpoint = os.environ["FLAME_ENDPOINT"]
mode = stat.S_IMODE(os.stat(os.path.dirname(endpoint[len("unix://"):])).st_mode)
print(endpoint, oct(mode), ssn.invoke(b"via-run", timeout=60).decode())
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
    endpoint, mode, output = proc.stdout.split()
    assert endpoint.startswith("unix:///")  # owner-only by default: no TCP port
    assert mode == "0o700"
    assert output == "via-run"
    assert "WARNING" not in proc.stderr
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
        assert line.startswith("FLAME_ENDPOINT=unix:///")
        assert proc.stdout.readline().startswith("FLAME_CACHE_ENDPOINT=grpc+unix:///")
        with Connection.connect(line.split("=", 1)[1]) as conn:
            assert {a.name for a in conn.list_applications()} == {"flmrun", "flmping", "flmexec"}
            assert conn.list_nodes()[0].capacity.cpu == 1
        assert proc.stderr is not None
        said = proc.stderr.readline()
        while not said.startswith("instance logs: "):
            said = proc.stderr.readline()
            assert said, "flame-local up did not say where its logs are"
        logs = Path(said.split()[2])
        assert logs.is_dir() and "removed when it stops" in said and "flmctl logs" in said
        socket_dir = Path(line.split("=", 1)[1].removeprefix("unix://")).parent
        assert (socket_dir / "logs").resolve() == logs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_dashboard_prints_its_url(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "up", "--capacity", "1", "--dashboard"],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        said = proc.stderr.readline()
        while not said.startswith("dashboard: "):
            said = proc.stderr.readline()
            assert said, "flame-local up --dashboard did not print its URL"
        url = said.split()[1]
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"Flame" in page.read()
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


def _up(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``flame-local up ARGS`` and read the variables it prints."""
    proc = subprocess.Popen(
        [*CLI, "up", "--capacity", "1", *args],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    while True:
        line = proc.stdout.readline().strip()
        assert line, f"flame-local up exited: {proc.wait(30)}, {proc.stderr and proc.stderr.read()}"
        key, _, value = line.partition("=")
        printed[key] = value
        if key == "FLAME_CACHE_ENDPOINT":
            if "--no-auth" not in args:
                printed["FLAME_TOKEN_FILE"] = proc.stdout.readline().strip().partition("=")[2]
            return proc, printed


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    return proc.stderr.read()


def test_up_on_tcp_requires_the_printed_token(tmp_path: Path) -> None:
    from flamepy import ConfigError

    proc, printed = _up(tmp_path, "--host", "127.0.0.1")
    try:
        endpoint, token_file = printed["FLAME_ENDPOINT"], Path(printed["FLAME_TOKEN_FILE"])
        assert endpoint.startswith("http://127.0.0.1:")
        assert printed["FLAME_CACHE_ENDPOINT"].startswith("grpc://127.0.0.1:")
        assert token_file.stat().st_mode & 0o777 == 0o600
        client = (
            f"import flamepy; c = flamepy.Connection.connect({endpoint!r}); "
            "print(sorted(a.name for a in c.list_applications()))"
        )
        env = {**_env(tmp_path), "FLAME_ENDPOINT": endpoint}
        denied = subprocess.run(
            [sys.executable, "-c", client], env=env, capture_output=True, text=True, timeout=60
        )
        assert denied.returncode != 0
        assert "ConfigError" in denied.stderr and "access token" in denied.stderr
        allowed = subprocess.run(
            [sys.executable, "-c", client],
            env={**env, "FLAME_TOKEN_FILE": str(token_file)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert allowed.returncode == 0, allowed.stderr
        assert "flmrun" in allowed.stdout
        with pytest.raises(ConfigError, match="access token"):
            Connection.connect(endpoint).list_applications()
    finally:
        _stop(proc)
    assert not token_file.exists()


def test_up_with_a_token_file_uses_that_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("my-own-secret\n")
    token_file.chmod(0o600)
    proc, printed = _up(
        tmp_path, "--port", "0", "--host", "127.0.0.1", "--token-file", str(token_file)
    )
    try:
        assert Path(printed["FLAME_TOKEN_FILE"]).read_text().strip() == "my-own-secret"
    finally:
        _stop(proc)


def test_up_no_auth_warns_loudly(tmp_path: Path) -> None:
    proc, printed = _up(tmp_path, "--host", "127.0.0.1", "--no-auth")
    try:
        assert "FLAME_TOKEN_FILE" not in printed
        with Connection.connect(printed["FLAME_ENDPOINT"]) as conn:
            assert "flmrun" in {a.name for a in conn.list_applications()}
    finally:
        stderr = _stop(proc)
    assert "WARNING: --no-auth" in stderr and "run commands as" in stderr


@pytest.mark.parametrize(
    "args",
    [["--no-auth"], ["--tls-cert", "/x.pem", "--tls-key", "/x.key"], ["--token-file", "/x"]],
)
def test_tcp_options_without_tcp_are_refused(tmp_path: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [*CLI, "up", *args], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "applies to TCP only" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another account")
def test_a_work_dir_of_another_account_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    proc = subprocess.run(
        [*CLI, "up", "--work-dir", str(theirs)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "belongs to another account" in proc.stderr and str(theirs) in proc.stderr


def test_an_own_work_dir_is_made_owner_only(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    proc = subprocess.run(
        [*CLI, "run", "--work-dir", str(mine), "--", sys.executable, "-c", CLIENT],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert mine.stat().st_mode & 0o777 == 0o700
    logs = list((mine / "logs").iterdir())
    assert logs and all(p.stat().st_mode & 0o777 == 0o600 for p in logs)
    assert (mine / "logs").stat().st_mode & 0o777 == 0o700
