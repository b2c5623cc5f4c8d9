"""End-to-end tests of the flmrun instance runtime (helpers: ``_instances.py``).

Every test that talks gRPC starts a real instance process (``python -m flmrun`` or
``python -m flame_testkit._testapp``) in its own process group, bound to a real Unix socket
under a short /tmp directory, and drives it the way an executor manager does. Processes are
killed (SIGKILL to the group) in fixture teardown whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from _instances import RPC_TIMEOUT, TESTAPP, WAIT, Instance, events, wait_for

import flmrun
from flamepy.proto import shim_pb2
from flmrun._server import format_error, log_level_from_env

# --------------------------------------------------------------------------- test app


def test_testapp_session_round_trip(
    spawn: Callable[..., Instance], base_env: dict[str, str]
) -> None:
    base_env["FLMRUN_TEST_VALUE"] = "hello env"
    inst = spawn(*TESTAPP)
    inst.wait_socket()

    assert inst.enter(common_data=b"shared").return_code == 0

    r = inst.invoke(b"abc")
    assert r.return_code == 0
    assert r.output == b"echo:abc"
    assert inst.invoke(None).output == b"echo:"
    assert inst.invoke(b"common").output == b"shared"
    assert inst.invoke(b"pid").output == str(inst.proc.pid).encode()
    assert inst.invoke(b"env:FLMRUN_TEST_VALUE").output == b"hello env"
    assert inst.invoke(b"env:FLMRUN_NOT_SET_ANYWHERE").output == b""
    assert inst.invoke(b"sleep:0.05").output == b"slept"

    assert inst.leave().return_code == 0
    assert inst.proc.poll() is None  # the process waits for SIGTERM after leaving


def test_testapp_common_is_empty_without_common_data(spawn: Callable[..., Instance]) -> None:
    inst = spawn(*TESTAPP)
    inst.wait_socket()
    assert inst.enter().return_code == 0
    r = inst.invoke(b"common")
    assert r.return_code == 0
    assert r.output == b""


def test_task_failure_reports_type_message_and_traceback(
    spawn: Callable[..., Instance],
) -> None:
    inst = spawn(*TESTAPP)
    inst.wait_socket()
    assert inst.enter().return_code == 0

    r = inst.invoke(b"fail:disk on fire")
    assert r.return_code == -1
    assert not r.HasField("output")
    assert r.message.startswith("RuntimeError: disk on fire\n")
    assert "Traceback (most recent call last)" in r.message
    assert "_testapp.py" in r.message  # the service's own frame is in the traceback
    assert r.message.rstrip().endswith("RuntimeError: disk on fire")

    # The instance keeps serving after a failed task.
    assert inst.invoke(b"again").output == b"echo:again"


def test_failed_enter_still_leaves_with_zero(spawn: Callable[..., Instance]) -> None:
    inst = spawn(*TESTAPP)
    inst.wait_socket()

    r = inst.enter(common_data=b"fail-enter")
    assert r.return_code == -1
    assert r.message.startswith("RuntimeError: enter refused\n")
    assert "Traceback" in r.message

    assert inst.leave().return_code == 0
    assert inst.leave().return_code == 0  # a repeated leave is harmless too


def test_crashing_task_kills_the_instance(spawn: Callable[..., Instance]) -> None:
    inst = spawn(*TESTAPP)
    inst.wait_socket()
    assert inst.enter().return_code == 0
    with pytest.raises(grpc.RpcError):
        inst.invoke(b"exit:3")
    assert inst.wait_exit() == 3


# --------------------------------------------------------------------------- shutdown


def test_sigterm_exits_zero_and_removes_socket(spawn: Callable[..., Instance]) -> None:
    inst = spawn(*TESTAPP)
    inst.wait_socket()
    assert inst.enter().return_code == 0
    assert inst.leave().return_code == 0

    inst.signal_group(signal.SIGTERM)
    assert inst.wait_exit(timeout=10) == 0
    assert not os.path.exists(inst.sock)
    assert "Traceback" not in inst.stderr()


def test_sigint_exits_zero(spawn: Callable[..., Instance]) -> None:
    inst = spawn(*TESTAPP)
    inst.wait_socket()
    inst.signal_group(signal.SIGINT)
    assert inst.wait_exit(timeout=10) == 0
    assert not os.path.exists(inst.sock)


def test_sigterm_calls_leave_when_session_was_not_left(
    spawn: Callable[..., Instance], workdir: Path
) -> None:
    inst = spawn("-m", "flmrun", "--service", "flmtestsvc:Recorder")
    inst.wait_socket()
    assert inst.enter().return_code == 0
    inst.signal_group(signal.SIGTERM)
    assert inst.wait_exit(timeout=10) == 0
    assert events(workdir) == ["enter", "leave"]


def test_leave_runs_once(spawn: Callable[..., Instance], workdir: Path) -> None:
    inst = spawn("-m", "flmrun", "--service", "flmtestsvc:Recorder")
    inst.wait_socket()
    assert inst.enter().return_code == 0
    assert inst.leave().return_code == 0
    inst.signal_group(signal.SIGTERM)
    assert inst.wait_exit(timeout=10) == 0
    assert events(workdir) == ["enter", "leave"]


def test_sigterm_during_a_hung_task_still_exits(spawn: Callable[..., Instance]) -> None:
    inst = spawn(*TESTAPP)
    inst.wait_socket()
    assert inst.enter().return_code == 0
    ctx = shim_pb2.TaskContext(task_id="1", session_id="s-1", input=b"sleep:600")
    call = inst.stub.OnTaskInvoke.future(ctx, timeout=RPC_TIMEOUT)
    time.sleep(0.3)  # let the task reach its sleep; correctness does not depend on it
    inst.signal_group(signal.SIGTERM)
    # 5 s grace for the in-flight task, then exit although its thread is still sleeping.
    assert inst.wait_exit(timeout=20) == 0
    assert not os.path.exists(inst.sock)
    with pytest.raises(grpc.RpcError):
        call.result(timeout=WAIT)


# --------------------------------------------------------------------------- services


def test_non_bytes_output_is_a_failure(spawn: Callable[..., Instance]) -> None:
    inst = spawn("-m", "flmrun", "--service", "flmtestsvc:Recorder")
    inst.wait_socket()
    assert inst.enter().return_code == 0

    r = inst.invoke(b"str")
    assert r.return_code == -1
    assert r.message == "TypeError: on_task_invoke must return bytes or None, not str"
    assert not r.HasField("output")

    r = inst.invoke(b"none")
    assert r.return_code == 0
    assert not r.HasField("output")

    r = inst.invoke(b"")
    assert r.return_code == 0
    assert r.HasField("output")
    assert r.output == b""


def test_sync_methods_run_in_a_worker_thread(spawn: Callable[..., Instance]) -> None:
    inst = spawn("-m", "flmrun", "--service", "flmtestsvc:Recorder")
    inst.wait_socket()
    assert inst.enter().return_code == 0
    name = inst.invoke(b"thread").output
    assert name != b"MainThread"
    assert name.startswith(b"flmrun-")


def test_async_service(spawn: Callable[..., Instance], workdir: Path) -> None:
    inst = spawn("-m", "flmrun", "--service", "flmtestsvc:AsyncService")
    inst.wait_socket()
    assert inst.enter(common_data=b"pre-").return_code == 0
    r = inst.invoke(b"x")
    assert r.return_code == 0
    assert r.output == b"pre-x"
    assert inst.invoke(b"thread").output == b"MainThread"  # coroutines run on the loop

    r = inst.invoke(b"raise")
    assert r.return_code == -1
    assert r.message.startswith("ValueError: async boom\n")
    assert "Traceback" in r.message

    # on_session_leave raises, but the RPC still reports success.
    assert inst.leave().return_code == 0
    assert events(workdir) == ["enter", "leave"]


def test_service_without_on_task_invoke(spawn: Callable[..., Instance]) -> None:
    inst = spawn("-m", "flmrun", "--service", "flmtestsvc:NoInvoke")
    inst.wait_socket()
    assert inst.enter().return_code == 0
    r = inst.invoke(b"x")
    assert r.return_code == -1
    assert r.message.startswith("NotImplementedError: NoInvoke does not implement on_task_invoke")


def test_socket_is_bound_before_the_service_module_is_imported(
    spawn: Callable[..., Instance], workdir: Path, base_env: dict[str, str]
) -> None:
    started, release, finished = workdir / "started", workdir / "release", workdir / "finished"
    base_env.update(
        FLMRUN_TEST_STARTED=str(started),
        FLMRUN_TEST_RELEASE=str(release),
        FLMRUN_TEST_FINISHED=str(finished),
    )
    inst = spawn("-m", "flmrun", "--service", "flmtestslow:Slow")

    # The import cannot finish until `release` exists, yet the socket appears and the
    # import has started: the socket was bound first.
    inst.wait_socket()
    wait_for(started.exists, WAIT, "the service import to start")
    assert not finished.exists()

    # An RPC sent while the import is blocked waits for it rather than failing.
    ctx = shim_pb2.SessionContext(session_id="s-1", application=shim_pb2.ApplicationContext())
    pending = inst.stub.OnSessionEnter.future(ctx, timeout=RPC_TIMEOUT)
    time.sleep(0.2)
    assert not pending.done()
    assert not finished.exists()

    release.touch()
    assert pending.result(timeout=RPC_TIMEOUT).return_code == 0
    assert finished.exists()
    assert inst.invoke(b"q").output == b"slow:q"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("flm_no_such_module:Svc", "ServiceLoadError: cannot import module 'flm_no_such_module'"),
        ("flmtestsvc:Missing", "ServiceLoadError: 'flmtestsvc:Missing': 'flmtestsvc' has no"),
        ("flmtestsvc:NotAService", "not a subclass of flmrun.FlameService"),
        ("flmtestsvc:BadInit", "ServiceLoadError: constructing flmtestsvc:BadInit failed"),
    ],
)
def test_unloadable_service_is_reported_through_rpcs(
    spawn: Callable[..., Instance], spec: str, expected: str
) -> None:
    inst = spawn("-m", "flmrun", "--service", spec)
    inst.wait_socket()  # bound even though the service can never load

    r = inst.enter()
    assert r.return_code == -1
    assert expected in r.message
    t = inst.invoke(b"x")
    assert t.return_code == -1
    assert expected in t.message
    assert inst.leave().return_code == 0

    inst.signal_group(signal.SIGTERM)
    assert inst.wait_exit(timeout=10) == 0


def test_stale_socket_file_is_replaced(spawn: Callable[..., Instance], workdir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(workdir / "x.sock"))
    stale.close()  # leaves the socket file behind, with nobody listening
    assert os.path.exists(workdir / "x.sock")

    inst = spawn(*TESTAPP)
    assert inst.enter().return_code == 0  # wait_for_ready rides out the startup
    assert inst.invoke(b"fresh").output == b"echo:fresh"


# --------------------------------------------------------------------------- startup errors


@pytest.mark.parametrize("args", [TESTAPP, ("-m", "flmrun", "--service", "flmtestsvc:Recorder")])
def test_missing_endpoint_fails(
    spawn: Callable[..., Instance], base_env: dict[str, str], args: tuple[str, ...]
) -> None:
    del base_env["FLAME_INSTANCE_ENDPOINT"]
    inst = spawn(*args)
    assert inst.wait_exit() != 0
    assert "FLAME_INSTANCE_ENDPOINT" in inst.stderr()
    assert "Traceback" not in inst.stderr()


def test_relative_endpoint_fails(spawn: Callable[..., Instance], base_env: dict[str, str]) -> None:
    base_env["FLAME_INSTANCE_ENDPOINT"] = "relative.sock"
    inst = spawn(*TESTAPP)
    assert inst.wait_exit() != 0
    assert "absolute" in inst.stderr()
    assert "relative.sock" in inst.stderr()


def test_no_service_serves_runner_requests(spawn: Callable[..., Instance]) -> None:
    inst = spawn("-m", "flmrun")
    inst.wait_socket()
    result = inst.enter(None)  # a Runner session always carries common data
    assert result.return_code == -1
    assert "Common data is None in session context" in result.message
    assert inst.leave().return_code == 0


def test_malformed_service_spec_exits_2(spawn: Callable[..., Instance]) -> None:
    inst = spawn("-m", "flmrun", "--service", "no-colon-here")
    assert inst.wait_exit() == 2
    assert "module:ClassName" in inst.stderr()


# --------------------------------------------------------------------------- in-process


class _Echo(flmrun.FlameService):
    def on_task_invoke(self, context: flmrun.TaskContext) -> bytes | None:
        return context.input


def test_serve_rejects_relative_endpoint() -> None:
    with pytest.raises(flmrun.InstanceConfigError, match="absolute"):
        asyncio.run(flmrun.serve(_Echo(), endpoint="x.sock"))


def test_serve_refuses_to_replace_a_regular_file(workdir: Path) -> None:
    path = workdir / "x.sock"
    path.write_text("not a socket")
    with pytest.raises(flmrun.InstanceConfigError, match="not a socket"):
        asyncio.run(flmrun.serve(_Echo(), endpoint=str(path)))
    assert path.read_text() == "not a socket"


def test_serve_reports_unbindable_path(workdir: Path) -> None:
    with pytest.raises(flmrun.InstanceConfigError, match="cannot bind"):
        asyncio.run(flmrun.serve(_Echo(), endpoint=str(workdir / "missing-dir" / "x.sock")))


def test_missing_endpoint_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLAME_INSTANCE_ENDPOINT", raising=False)
    with pytest.raises(flmrun.InstanceConfigError, match="FLAME_INSTANCE_ENDPOINT"):
        flmrun.run(_Echo)


def test_error_hierarchy() -> None:
    assert issubclass(flmrun.InstanceConfigError, flmrun.FlmrunError)
    assert issubclass(flmrun.ServiceLoadError, flmrun.FlmrunError)
    assert issubclass(flmrun.FlmrunError, Exception)


def test_format_error() -> None:
    def fail() -> None:
        raise KeyError("k")

    try:
        fail()
    except KeyError as exc:
        text = format_error(exc)
    first, rest = text.split("\n", 1)
    assert first == "KeyError: 'k'"
    assert rest.startswith("Traceback (most recent call last):\n")
    assert "in fail" in rest
    assert rest.endswith("KeyError: 'k'")


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (None, 20),
        ("", 20),
        ("info", 20),
        ("debug", 10),
        ("trace", 10),
        ("WARN", 30),
        ("error", 40),
        ("flame=debug,warn", 30),
        ("flame_executor_manager=debug", 20),
        ("bogus", 20),
    ],
)
def test_log_level_from_env(value: str | None, level: int) -> None:
    assert log_level_from_env(value) == level


def test_public_api_and_light_import() -> None:
    assert flmrun.__version__ == "0.1.0"
    for name in flmrun.__all__:
        assert hasattr(flmrun, name), name
    code = (
        "import sys, flmrun; "
        "assert 'grpc' not in sys.modules, 'grpc imported eagerly'; "
        "flmrun.run; assert 'grpc' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT)


def test_contexts_defaults() -> None:
    app = flmrun.ApplicationContext(name="a")
    assert (app.image, app.command, app.working_directory, app.url, app.shim, app.installer) == (
        None,
        None,
        None,
        None,
        0,
        None,
    )
    # Flame 0.6's shape: positional (common data, session id, application), and
    # common_data() a method.
    session = flmrun.SessionContext(b"cd", "s", app)
    assert session.common_data() == b"cd" and session.session_id == "s"
    assert flmrun.SessionContext(None, "s", app).common_data() is None
    task = flmrun.TaskContext(task_id="1", session_id="s", input=b"x")
    assert task.input == b"x"
    service = flmrun.FlameService()
    assert service.on_session_enter(session) is None
    assert service.on_session_leave() is None
    with pytest.raises(NotImplementedError):
        service.on_task_invoke(task)
