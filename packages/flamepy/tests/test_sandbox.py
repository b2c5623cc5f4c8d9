"""flamepy.tools.sandbox against the local cluster's flmexec (docs/sandbox.md).

Every script runs for real: a session of ``flmexec`` whose instances are processes
of ``flame_testkit._apps exec``.  Tests that look at the cluster's own side (its
working directory, its time limit, files shared with the scripts) need the local
cluster and skip against a remote one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

import flamepy
from flame_testkit import ClusterThread
from flame_testkit._apps import EXEC_TIMEOUT_ENV
from flamepy import (
    AsyncConnection,
    Connection,
    FlameTimeoutError,
    FlameUsageError,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
    ResourceRequirement,
    SessionAttributes,
    SessionState,
    TaskFailedError,
    TaskFuture,
)
from flamepy.tools import AsyncSandbox, Sandbox, SandboxAttr, SandboxOutput

WAIT = 60.0
PY = SandboxAttr(language="python", timeout=WAIT)
SH = SandboxAttr(language="shell", timeout=WAIT)


def _local(cluster: object) -> ClusterThread:
    if not isinstance(cluster, ClusterThread):
        pytest.skip("looks at the local cluster's side")
    return cluster


def test_python_script_returns_its_stdout(flame_connection: Connection) -> None:
    with Sandbox.create(PY, connection=flame_connection) as sb:
        out = sb.run_code("import sys; print(sum(range(10)), sys.version_info[0])")
        assert isinstance(out, SandboxOutput)
        assert out.data == b"45 3\n" and out.text() == "45 3\n"
        # The sandbox stays usable: a second script in the same session.
        assert sb.run_code("print('again')").text() == "again\n"


def test_shell_script_runs_in_the_instance_working_directory(
    flame_cluster: object, flame_connection: Connection
) -> None:
    cluster = _local(flame_cluster)
    with Sandbox.create(SH, connection=flame_connection) as sb:
        assert sb.attr.language == "shell"
        lines = sb.run_code("echo $((6 * 7)); pwd").text().split()
    assert lines[0] == "42"
    assert Path(lines[1]).is_relative_to(cluster.cluster.work_dir)


def test_input_bytes_reach_the_scripts_stdin_unchanged(flame_connection: Connection) -> None:
    data = bytes(range(256)) * 3  # every byte value, NUL and 0xff included
    with Sandbox.create(PY, connection=flame_connection) as py:
        rev = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"
        assert py.run_code(rev, data).data == data[::-1]
        assert py.run_code(rev, bytearray(b"abc")).data == b"cba"
        # No input: the script reads an empty stdin, it does not wait for one.
        assert py.run_code("import sys; print(len(sys.stdin.read()))").text() == "0\n"
    with Sandbox.create(SH, connection=flame_connection) as sh:
        assert sh.run_code("tr a-z A-Z", b"shout\n").data == b"SHOUT\n"


def test_failing_script_raises_task_failed_error_with_its_stderr(
    flame_connection: Connection,
) -> None:
    with Sandbox.create(PY, connection=flame_connection) as sb:
        code = "import sys; print('partial'); sys.stderr.write('kaput-1234'); sys.exit(3)"
        with pytest.raises(TaskFailedError) as failed:
            sb.run_code(code)
        assert "exited with code 3" in failed.value.message
        assert "kaput-1234" in failed.value.message
        assert failed.value.session_id == sb.sandbox_id
        with pytest.raises(TaskFailedError, match=r"NameError: name 'nope'"):
            sb.run_code("nope")
        assert sb.run_code("print('still fine')").text() == "still fine\n"
    with (
        Sandbox.create(SH, connection=flame_connection) as sh,
        pytest.raises(TaskFailedError, match=r"exited with code 2: oops-5678"),
    ):
        sh.run_code("echo oops-5678 >&2; exit 2")


def test_client_timeout_fails_a_script_that_sleeps_forever(
    flame_cluster: object, flame_connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    forever = "while :; do sleep 1; done"
    if isinstance(flame_cluster, ClusterThread):
        monkeypatch.setenv(EXEC_TIMEOUT_ENV, "5")  # so that the cluster ends it in 5 s
    else:
        forever = "sleep 8"  # a real flmexec has no limit of its own
    with Sandbox.create(SandboxAttr("shell", timeout=1.5), connection=flame_connection) as sb:
        sb.run_code("true", timeout=WAIT)  # the instance is up: the limit times the script
        start = time.monotonic()
        with pytest.raises(FlameTimeoutError) as late:
            sb.run_code(forever)
        elapsed = time.monotonic() - start
        assert 1.5 <= elapsed < 1.5 + 5, elapsed
        assert f"script in sandbox {sb.sandbox_id} did not finish within 1.5s" in str(late.value)
        assert isinstance(late.value, TimeoutError)
    # Leaving the block does not raise although the script still runs: the
    # session is closed once it has ended.
    assert sb.closed
    deadline = time.monotonic() + WAIT
    while flame_connection.get_session(sb.sandbox_id).state != SessionState.CLOSED:
        assert time.monotonic() < deadline, "the sandbox's session was never closed"
        time.sleep(0.2)


def test_per_call_timeout_overrides_the_sandboxs(flame_connection: Connection) -> None:
    with Sandbox.create(SandboxAttr("shell", timeout=WAIT), connection=flame_connection) as sb:
        with pytest.raises(FlameTimeoutError, match=r"within 0\.5s"):
            sb.run_code("sleep 3", timeout=0.5)
        assert sb.run_code("echo quick", timeout=WAIT).text() == "quick\n"


def test_cluster_time_limit_kills_a_script_and_reports_its_stderr(
    flame_cluster: object, flame_connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    _local(flame_cluster)
    monkeypatch.setenv(EXEC_TIMEOUT_ENV, "1")  # read by the instance this sandbox starts
    with Sandbox.create(SandboxAttr("python", timeout=WAIT), connection=flame_connection) as sb:
        sb.run_code("pass")
        start = time.monotonic()
        with pytest.raises(TaskFailedError) as killed:
            sb.run_code(
                "import sys, time; sys.stderr.write('waiting-9'); sys.stderr.flush()\n"
                "while True: time.sleep(1)"
            )
        assert time.monotonic() - start < 1 + 10
        assert "the python script ran out of time (1s) and was killed" in killed.value.message
        assert "waiting-9" in killed.value.message


def test_submit_code_runs_scripts_at_the_same_time(
    flame_cluster: object, flame_connection: Connection, tmp_path: Path
) -> None:
    """Each script waits until all have started: they can only all finish if they
    run at once, on as many instances."""
    cluster = _local(flame_cluster)
    count = min(3, cluster.cluster.config.capacity)
    code = (
        "import os, sys, time\n"
        f"d = {str(tmp_path)!r}\n"
        "me = sys.stdin.read()\n"
        "open(os.path.join(d, me), 'w').close()\n"
        "end = time.monotonic() + 30\n"
        f"while len(os.listdir(d)) < {count}:\n"
        "    if time.monotonic() > end: sys.exit('alone: ' + ','.join(os.listdir(d)))\n"
        "    time.sleep(0.05)\n"
        "print(me, end='')\n"
    )
    attr = SandboxAttr("python", max_instances=count, timeout=WAIT)
    with Sandbox.create(attr, connection=flame_connection) as sb:
        futures = [sb.submit_code(code, f"s{i}".encode()) for i in range(count)]
        assert all(isinstance(f, TaskFuture) for f in futures)
        outputs = [f.result(timeout=WAIT) for f in futures]
    assert [o.text() for o in outputs] == [f"s{i}" for i in range(count)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"s{i}" for i in range(count)]


def test_submit_code_future_fails_with_the_scripts_error(flame_connection: Connection) -> None:
    with Sandbox.create(SH, connection=flame_connection) as sb:
        ok = sb.submit_code("echo fine")
        bad = sb.submit_code("echo broken-42 >&2; exit 7")
        assert ok.result(timeout=WAIT).text() == "fine\n"
        with pytest.raises(TaskFailedError, match="exited with code 7: broken-42"):
            bad.result(timeout=WAIT)

        async def awaited() -> SandboxOutput:
            return await sb.submit_code("echo awaited")  # type: ignore[no-any-return]

        assert asyncio.run(awaited()).text() == "awaited\n"


def test_bad_language_and_arguments_are_usage_errors(flame_connection: Connection) -> None:
    before = len(flame_connection.list_sessions())
    with pytest.raises(InvalidArgumentError, match="unsupported sandbox language 'cobol'"):
        SandboxAttr(language="cobol")
    for bad in (
        {"language": "bash"},  # flmexec's languages are python and shell only
        {"runtime": ""},
        {"min_instances": -1},
        {"min_instances": 2, "max_instances": 1},
        {"timeout": 0},
        {"timeout": float("inf")},
    ):
        with pytest.raises(FlameUsageError):
            SandboxAttr(**bad)
    with pytest.raises(InvalidArgumentError, match="attr must be a SandboxAttr"):
        Sandbox.create("python", connection=flame_connection)  # type: ignore[arg-type]
    assert len(flame_connection.list_sessions()) == before  # nothing reached the cluster
    with Sandbox.create(PY, connection=flame_connection) as sb:
        with pytest.raises(InvalidArgumentError, match="input must be bytes"):
            sb.submit_code("print(1)", "text")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="code must be a str"):
            sb.run_code(b"print(1)")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="timeout"):
            sb.run_code("print(1)", timeout=-1)


def test_attr_is_frozen_normalized_and_copied() -> None:
    req = ResourceRequirement(cpu=1, memory=1 << 20)
    attr = SandboxAttr(language=" Shell ", runtime="bash", resreq=req)
    assert attr.language == "shell"
    assert attr.resreq == req and attr.resreq is not req  # the caller's object stays theirs
    with pytest.raises(FrozenInstanceError):
        attr.language = "python"  # type: ignore[misc]
    assert SandboxAttr() == SandboxAttr(
        language="python",
        runtime=None,
        min_instances=0,
        max_instances=None,
        resreq=None,
        timeout=300.0,
    )


def test_wire_is_flmexecs_json(flame_connection: Connection) -> None:
    attr = SandboxAttr(
        "python",
        runtime="{}.{}".format(*sys.version_info[:2]),
        min_instances=0,
        max_instances=2,
        resreq=ResourceRequirement(cpu=1, memory=1 << 30, gpu=0),
        timeout=WAIT,
    )
    with Sandbox.create(attr, connection=flame_connection) as sb:
        assert sb.run_code("print('x', end='')", b"\x00\xff").data == b"x"
        session = flame_connection.get_session(sb.sandbox_id)
        assert session.application == "flmexec"
        assert session.max_instances == 2
        assert json.loads(session.common_data() or b"") == {
            "language": "python",
            "runtime": attr.runtime,
            "min_instances": 0,
            "max_instances": 2,
            "resreq": {"cpu": 1, "memory": 1 << 30, "gpu": 0},
        }
        (task,) = list(session.list_tasks())
        assert json.loads(task.input) == {
            "language": "python",
            "code": "print('x', end='')",
            "input": [0, 255],
            "runtime": attr.runtime,
        }
        assert json.loads(task.output) == {"data": [ord("x")]}
    with Sandbox.create(SH, connection=flame_connection) as sh:
        sh.run_code("true")
        (task,) = list(flame_connection.get_session(sh.sandbox_id).list_tasks())
        assert json.loads(task.input) == {"language": "shell", "code": "true", "input": []}


def test_runtime_picks_the_interpreter(flame_cluster: object, flame_connection: Connection) -> None:
    _local(flame_cluster)
    with Sandbox.create(SandboxAttr("shell", runtime="sh"), connection=flame_connection) as sh:
        assert sh.run_code("echo ${BASH_VERSION:-none}").text() == "none\n"
    with Sandbox.create(SH, connection=flame_connection) as bash:  # bash by default, as Flame
        assert bash.run_code("echo ${BASH_VERSION:-none}").text() != "none\n"
    absent = SandboxAttr("python", runtime="2.1", timeout=WAIT)
    with (
        Sandbox.create(absent, connection=flame_connection) as old,
        pytest.raises(TaskFailedError, match=r"runtime '2\.1': no such Python"),
    ):
        old.run_code("print(1)")


def test_open_reads_the_sandbox_back(flame_connection: Connection) -> None:
    attr = SandboxAttr("shell", runtime="sh", max_instances=1, timeout=WAIT)
    with Sandbox.create(attr, connection=flame_connection) as sb:
        again = Sandbox.open(sb.sandbox_id, timeout=WAIT, connection=flame_connection)
        assert again.sandbox_id == sb.sandbox_id and again.attr == attr
        assert again.run_code("echo opened").text() == "opened\n"
    ping = flame_connection.create_session(SessionAttributes(application="flmping"))
    with ping, pytest.raises(InvalidArgumentError, match="not a sandbox: it runs 'flmping'"):
        Sandbox.open(ping.id, connection=flame_connection)
    odd = flame_connection.create_session(
        SessionAttributes(application="flmexec", common_data=b"not json")
    )
    with odd, pytest.raises(InvalidArgumentError, match="common_data is not JSON"):
        Sandbox.open(odd.id, connection=flame_connection)
    with pytest.raises(NotFoundError):
        Sandbox.open("flmexec-no-such-sandbox", connection=flame_connection)


def test_close_closes_the_session_and_ends_the_sandbox(flame_connection: Connection) -> None:
    with Sandbox.create(PY, connection=flame_connection) as sb:
        assert not sb.closed
    assert sb.closed
    assert flame_connection.get_session(sb.sandbox_id).state == SessionState.CLOSED
    sb.close()  # again: nothing
    with pytest.raises(InvalidStateError, match=f"sandbox {sb.sandbox_id} is closed"):
        sb.run_code("print(1)")
    with pytest.raises(InvalidStateError):
        sb.submit_code("print(1)")


def test_default_connection_is_used_without_one(flame_env: object) -> None:
    flamepy._client.reset_default_connection()
    try:
        with Sandbox.create(SandboxAttr("python", timeout=WAIT)) as sb:
            assert sb.connection is flamepy._client.default_connection()
            assert sb.run_code("print(2 ** 10)").text() == "1024\n"
            again = Sandbox.open(sb.sandbox_id)
            assert again.attr.timeout == 300.0  # not stored: the default again
            assert again.run_code("print('o')").text() == "o\n"
    finally:
        flamepy._client.reset_default_connection()


def test_async_sandbox_runs_and_submits(flame_env: object, flame_endpoint: str) -> None:
    async def main() -> list[str]:
        async with await AsyncConnection.connect(flame_endpoint) as conn:
            attr = SandboxAttr("python", max_instances=2, timeout=WAIT)
            async with await AsyncSandbox.create(attr, connection=conn) as sb:
                first = await sb.run_code("import sys; print(sys.stdin.read())", b"in")
                tasks = [sb.submit_code(f"print({i} * 2)") for i in range(3)]
                rest = await asyncio.gather(*tasks)
                with pytest.raises(TaskFailedError, match="exited with code 5"):
                    await sb.run_code("raise SystemExit(5)")
                again = await AsyncSandbox.open(sb.sandbox_id, connection=conn, timeout=WAIT)
                assert again.attr == attr
            assert sb.closed
            with pytest.raises(InvalidStateError):
                await sb.run_code("print(1)")
            return [first.text(), *(o.text() for o in rest)]

    assert asyncio.run(main()) == ["in\n", "0\n", "2\n", "4\n"]


def test_flmexec_raw_wire_defaults_and_legacy_numeric_runtime(
    flame_cluster: object, flame_connection: Connection
) -> None:
    """The testkit's flmexec without the SDK: the session's language is the tasks'
    default, and a number as ``runtime`` (testkit only) is a time limit."""
    _local(flame_cluster)
    common = json.dumps({"language": "shell"}).encode()
    attrs = SessionAttributes(application="flmexec", common_data=common)
    with flame_connection.create_session(attrs) as session:

        def run(**task: object) -> bytes | None:
            return session.invoke(json.dumps(task).encode(), timeout=WAIT)

        assert json.loads(run(code="echo $((6 * 7))") or b"") == {"data": list(b"42\n")}
        with pytest.raises(TaskFailedError, match=r"ran out of time \(1s\)"):
            run(code="sleep 30", runtime=1)
        with pytest.raises(TaskFailedError, match="unsupported language 'cobol'"):
            run(language="cobol", code="x")
        with pytest.raises(TaskFailedError, match="byte values"):
            run(code="true", input=[256])
