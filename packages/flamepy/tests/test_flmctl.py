"""``flmctl`` against a real local cluster (the flame-testkit fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import flamepy
from flamepy import Connection, SessionAttributes, SessionState
from flamepy._flmctl import fmt_memory, main, table

TEST_APP = "flmtest"
WAIT = 60.0
Run = tuple[int, str, str]
Flmctl = Callable[..., Run]


@pytest.fixture
def flmctl(flame_endpoint: str, capsys: pytest.CaptureFixture[str]) -> Flmctl:
    """Run ``main`` against the test cluster: (exit code, stdout, stderr)."""

    def run(*argv: str) -> Run:
        code = main(["--endpoint", flame_endpoint, *argv])
        out, err = capsys.readouterr()
        said, _, rest = err.partition("\n")  # flmctl first says which cluster it uses
        assert said == f"flmctl: cluster {flame_endpoint} (--endpoint)"
        return code, out, rest

    return run


def _close(conn: Connection, session_id: str) -> None:
    if conn.get_session(session_id).state == SessionState.OPEN:
        conn.close_session(session_id)


@pytest.fixture(scope="module")
def worked(flame_connection: Connection) -> Iterator[flamepy.Session]:
    """A session with two succeeded tasks and one failed task (message ``boom``)."""
    ssn = flame_connection.create_session(SessionAttributes(application=TEST_APP))
    try:
        assert ssn.invoke(b"x", timeout=WAIT) == b"echo:x"
        assert ssn.invoke(b"y", timeout=WAIT) == b"echo:y"
        with pytest.raises(flamepy.TaskFailedError, match="boom"):
            ssn.invoke(b"fail:boom", timeout=WAIT)
        yield ssn
    finally:
        _close(flame_connection, ssn.id)


def _column_starts(header: str) -> list[int]:
    return [header.index(name) for name in header.split()]


def _assert_aligned(lines: list[str]) -> None:
    """Every column starts at the header's offset on every line."""
    starts = _column_starts(lines[0])
    for line in lines:
        for start in starts[1:]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (line, start)


# -- formatting ------------------------------------------------------------------------


def test_table_pads_columns_to_the_widest_cell() -> None:
    text = table(("id", "name"), [("1", "long-name"), ("12345", "x")])
    assert text.splitlines() == ["ID     NAME", "1      long-name", "12345  x"]


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (512, "512"), (2048, "2Ki"), (3 * 1024**3, "3Gi"), (int(1.5 * 1024**3), "1.5Gi")],
)
def test_fmt_memory(size: int, text: str) -> None:
    assert fmt_memory(size) == text


# -- list ------------------------------------------------------------------------------


def test_list_applications(flmctl: Flmctl) -> None:
    code, out, err = flmctl("list", "-a")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SHIM", "STATE", "CREATED", "COMMAND"]
    flmrun = [line for line in lines if line.startswith("flmrun ")]
    assert len(flmrun) == 1 and "ENABLED" in flmrun[0] and "-m flmrun" in flmrun[0]
    assert any(line.startswith("flmtest ") for line in lines)
    _assert_aligned(lines)


def test_list_sessions_shows_counters(flmctl: Flmctl, worked: flamepy.Session) -> None:
    code, out, _ = flmctl("list", "-s")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "APP",
        "STATE",
        "CREATED",
        "PENDING",
        "RUNNING",
        "SUCCEED",
        "FAILED",
        "CANCELLED",
    ]
    _assert_aligned(lines)
    row = next(line for line in lines if line.startswith(worked.id + " "))
    parts = row.split()  # CREATED is two words: date and time
    assert parts[:3] == [worked.id, TEST_APP, "OPEN"]
    assert parts[5:] == ["0", "0", "2", "1", "0"]

    code, out, _ = flmctl("list", "-s", worked.id)
    assert code == 0 and len(out.splitlines()) == 2 and out.splitlines()[1].startswith(worked.id)


def test_list_tasks(flmctl: Flmctl, worked: flamepy.Session) -> None:
    code, out, _ = flmctl("list", "-t", "-s", worked.id)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "CREATED", "COMPLETED"]
    _assert_aligned(lines)
    states = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert sorted(states.values()) == ["FAILED", "SUCCEED", "SUCCEED"]


def test_list_executors_and_nodes(flmctl: Flmctl, worked: flamepy.Session) -> None:
    code, out, _ = flmctl("list", "-e")
    assert code == 0
    assert out.splitlines()[0].split() == ["ID", "NODE", "STATE", "SESSION"]
    _assert_aligned(out.splitlines())

    code, out, _ = flmctl("list", "-n")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "STATE", "CPU", "MEMORY", "ARCH", "OS"]
    assert len(lines) >= 2 and "READY" in lines[1].split()
    _assert_aligned(lines)


# -- view ------------------------------------------------------------------------------


def _key_values(out: str) -> dict[str, str]:
    lines = [line for line in out.splitlines() if line and not line[0].isspace()]
    pairs = [line.split(":", 1) for line in lines if not line.startswith("events:")]
    return {key: value.strip() for key, value in pairs}


def test_view_application(flmctl: Flmctl) -> None:
    code, out, _ = flmctl("view", "-a", "flmrun")
    assert code == 0
    values = _key_values(out)
    for key in (
        "name",
        "state",
        "created",
        "shim",
        "description",
        "command",
        "arguments",
        "environments",
        "working_directory",
        "url",
        "installer",
        "max_instances",
        "delay_release",
        "labels",
    ):
        assert key in values, key
    assert values["name"] == "flmrun" and values["state"] == "ENABLED"
    assert values["arguments"] == "-m flmrun" and values["installer"] == "python"
    # The values line up: each starts at the same column.
    starts = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in out.splitlines()}
    assert len(starts) == 1


def test_view_unknown_application(flmctl: Flmctl) -> None:
    code, out, err = flmctl("view", "-a", "no-such-app")
    assert (code, out) == (1, "")
    assert err.startswith("flmctl: error: ") and "no-such-app" in err and "not found" in err


def test_view_session(flmctl: Flmctl, worked: flamepy.Session) -> None:
    code, out, _ = flmctl("view", "-s", worked.id)
    assert code == 0
    values = _key_values(out)
    assert values["id"] == worked.id and values["application"] == TEST_APP
    assert values["state"] == "OPEN" and values["completed"] == "-"
    counters = {k: values[k] for k in ("pending", "running", "succeed", "failed", "cancelled")}
    assert counters == dict(pending="0", running="0", succeed="2", failed="1", cancelled="0")
    assert "events:" in out


def test_view_failed_task_shows_its_message(flmctl: Flmctl, worked: flamepy.Session) -> None:
    failed = next(t for t in worked.list_tasks() if t.state == flamepy.TaskState.FAILED)
    code, out, _ = flmctl("view", "-s", worked.id, "-t", failed.id)
    assert code == 0
    values = _key_values(out)
    assert values["id"] == failed.id and values["state"] == "FAILED"
    assert values["input"] == "9 bytes" and values["output"] == "-"
    assert values["completed"] != "-"
    lines = out.splitlines()
    header = lines.index("events:") + 1
    assert lines[header].split() == ["CODE", "TIME", "MESSAGE"]
    column = lines[header].index("MESSAGE")
    failed_line = next(i for i, line in enumerate(lines) if "(FAILED)" in line)
    assert "boom" in lines[failed_line][column:]
    # The full traceback follows, indented to the message column.
    continuation = lines[failed_line + 1 :]
    assert continuation and all(line[:column].isspace() for line in continuation)
    assert any("RuntimeError: boom" in line for line in continuation)


def test_view_succeeded_task(flmctl: Flmctl, worked: flamepy.Session) -> None:
    ok = next(t for t in worked.list_tasks() if t.state == flamepy.TaskState.SUCCEED)
    code, out, _ = flmctl("view", "-s", worked.id, "-t", ok.id)
    values = _key_values(out)
    assert code == 0 and values["state"] == "SUCCEED"
    assert values["input"] == "1 byte" and values["output"] == "6 bytes"


def test_view_unknown_task(flmctl: Flmctl, worked: flamepy.Session) -> None:
    code, out, err = flmctl("view", "-s", worked.id, "-t", "98765")
    assert (code, out) == (1, "")
    assert err.startswith("flmctl: error: ") and "98765" in err


# -- close and errors ------------------------------------------------------------------


def test_close_session(flmctl: Flmctl, flame_connection: Connection) -> None:
    ssn = flame_connection.create_session(SessionAttributes(application=TEST_APP))
    try:
        assert ssn.invoke(b"x", timeout=WAIT) == b"echo:x"
        code, out, err = flmctl("close", "-s", ssn.id)
        assert (code, out, err) == (0, f"session {ssn.id} closed\n", "")
        assert flame_connection.get_session(ssn.id).state == SessionState.CLOSED
        code, out, _ = flmctl("view", "-s", ssn.id)
        assert code == 0 and _key_values(out)["state"] == "CLOSED"
    finally:
        _close(flame_connection, ssn.id)


@pytest.mark.parametrize(
    "argv",
    [
        ["view", "-s", "{sid}"],
        ["list", "-s", "{sid}"],
        ["list", "-t", "-s", "{sid}"],
        ["view", "-s", "{sid}", "-t", "1"],
        ["close", "-s", "{sid}"],
    ],
)
def test_unknown_session(flmctl: Flmctl, argv: list[str]) -> None:
    sid = "no-such-session-4711"
    code, out, err = flmctl(*(a.format(sid=sid) for a in argv))
    assert (code, out) == (1, "")
    assert err.startswith("flmctl: error: ") and sid in err and "not found" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["list"],
        ["list", "-a", "-e"],
        ["list", "-a", "-s"],
        ["list", "-t"],
        ["list", "-t", "-s"],
        ["list", "-t", "-a", "-s", "x"],
        ["view"],
        ["view", "-a", "x", "-s", "y"],
        ["view", "-a", "x", "-t", "1"],
        ["close"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: flmctl" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--endpoint" in capsys.readouterr().out


def test_console_script(flame_endpoint: str) -> None:
    exe = Path(sys.executable).parent / "flmctl"
    assert exe.is_file(), f"{exe} is not installed: run uv sync"
    done = subprocess.run(
        [str(exe), "--endpoint", flame_endpoint, "list", "-a"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("flmrun ") for line in done.stdout.splitlines())

    done = subprocess.run(
        [str(exe), "--endpoint", flame_endpoint, "view", "-s", "no-such-session-4711"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "no-such-session-4711" in done.stderr
    assert subprocess.run([str(exe), "list"], capture_output=True, timeout=120).returncode == 2

    # Without --endpoint, the flamepy configuration (here FLAME_ENDPOINT) is used.
    env = {**os.environ, "FLAME_ENDPOINT": flame_endpoint}
    done = subprocess.run(
        [str(exe), "list", "-n"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["NAME", "STATE", "CPU", "MEMORY", "ARCH", "OS"]


def test_flmctl_says_when_it_talks_to_a_throwaway_cluster(tmp_path: Path) -> None:
    """Issue 19: with nothing configured, flmctl says the cluster is a throwaway one."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "flamepy._flmctl", "list", "-a"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "flmctl: cluster a throwaway embedded local cluster" in proc.stderr
