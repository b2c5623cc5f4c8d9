"""``flamepy.service`` (issue "SDK parity", item 2): FlameInstance served by flmrun,
driven by our Session / AsyncSession on the testkit, and both sides against Flame's
own SDK (flamepy 0.6.0, the *peer*, run as separate processes with its own python).

Also the 0.6 module paths ``flamepy.cache`` and ``flamepy.util`` (item 3).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import pytest

import flamepy
import flamepy.cache
import flamepy.service
import flamepy.util
from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy import (
    FlameUsageError,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
    ResourceRequirement,
    SessionState,
    TaskFailedError,
    _client,
)
from flamepy._cache import client as _cache_client
from flamepy.core import cache as core_cache
from flamepy.core.cache import ObjectRef, get_object
from flamepy.service import AsyncSession, FlameInstance, Session
from flamepy.service._common import parse_memory, resource_requirement

WAIT = 60.0
PEER_PYTHON = Path(
    os.environ.get("FLAME_PEER_PYTHON")
    or Path(__file__).resolve().parents[3] / ".nox" / "conformance-peer" / "bin" / "python"
)
PEER_TIMEOUT = 150.0

# One instance script, three entrypoint shapes (chosen by argv[1]).  It runs under
# whichever python the application names: ours, or the peer's (whose flamepy.service
# has the same names).
INSTANCE = """
import asyncio
import os
import sys

from flamepy.service import FlameInstance

instance = FlameInstance()
kind = sys.argv[1] if len(sys.argv) > 1 else "one"

if kind == "one":
    @instance.entrypoint
    def handle(req):
        op, arg = req
        if op == "echo":
            return arg
        if op == "none":
            return None
        if op == "ctx":
            return instance.context()
        if op == "update":
            instance.update_context(arg)
            return instance.context()
        if op == "fail":
            raise ValueError(f"asked to fail: {arg}")
        if op == "where":
            import flamepy
            return flamepy.__file__
        raise KeyError(op)

elif kind == "zero":
    calls = []

    @instance.entrypoint
    def handle():
        calls.append(1)
        return {"calls": len(calls), "ctx": instance.context()}

elif kind == "async":
    @instance.entrypoint
    async def handle(req):
        await asyncio.sleep(0.01)
        loop = id(asyncio.get_running_loop())
        return {"doubled": req * 2, "loop": loop}

if __name__ == "__main__":
    instance.run()
"""


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def service_env(flame_env: object) -> Iterator[object]:
    """The testkit cluster for the shared connection and cache clients of this process."""
    _client.reset_default_connection()
    _cache_client.reset_clients()
    try:
        yield flame_env
    finally:
        _client.reset_default_connection()
        _cache_client.reset_clients()


AppFactory = Callable[..., str]


def _register(conn: flamepy.Connection, tmp_path: Path, python: str, kind: str) -> str:
    script = tmp_path / f"instance_{kind}.py"
    script.write_text(INSTANCE)
    name = f"svc-{kind}-{uuid.uuid4().hex[:6]}"
    conn.register_application(name, {"command": python, "arguments": [str(script), kind]})
    return name


@pytest.fixture
def service_app(
    service_env: object, flame_connection: flamepy.Connection, tmp_path: Path
) -> Iterator[AppFactory]:
    """``service_app(kind)``: register an application running our FlameInstance script."""
    names: list[str] = []

    def make(kind: str = "one") -> str:
        names.append(_register(flame_connection, tmp_path, sys.executable, kind))
        return names[-1]

    yield make
    for name in names:
        for ssn in flame_connection.list_sessions():
            if ssn.application == name and ssn.state == SessionState.OPEN:
                flame_connection.close_session(ssn.id)
        flame_connection.unregister_application(name)


def _ref_of(session: Session) -> ObjectRef:
    inner = session._session
    assert inner is not None
    common = inner.common_data()
    assert common is not None
    return ObjectRef.decode(common)


# -- our Session against our FlameInstance ---------------------------------------------------


def test_invoke_sends_and_returns_python_values(service_app: AppFactory) -> None:
    app = service_app("one")
    with Session(app) as session:
        sid = session.id()
        assert sid is not None and re.fullmatch(rf"{re.escape(app)}-[A-Za-z0-9]{{6}}", sid)
        value = {"a": [1, 2.5, None], "b": (b"\x00bytes", frozenset({3})), "c": "text"}
        assert session.invoke(("echo", value), timeout=WAIT) == value
        assert session.invoke(("echo", 42)) == 42
        assert session.invoke(("none", None)) is None  # no output
        assert session.context() is None  # created without a context
        with pytest.raises(TaskFailedError, match="asked to fail: 7"):
            session.invoke(("fail", 7))
        assert session.invoke(("echo", "after a failure")) == "after a failure"
    assert session.id() is None


def test_task_input_and_output_are_plain_cloudpickle(
    service_app: AppFactory, flame_connection: flamepy.Connection
) -> None:
    """The wire form (flame-runner-wire.md §9), seen through the core API."""
    app = service_app("one")
    with Session(app) as session:
        sid = session.id()
        assert sid is not None
        core = flame_connection.open_session(sid)
        raw = core.invoke(cloudpickle.dumps(("echo", [1, "x"])), timeout=WAIT)
        assert raw is not None and cloudpickle.loads(raw) == [1, "x"]
        assert core.invoke(cloudpickle.dumps(("none", None)), timeout=WAIT) is None


def test_context_and_update_context_round_trip(
    service_app: AppFactory, flame_connection: flamepy.Connection
) -> None:
    app = service_app("one")
    ctx = {"history": ["hello"], "n": 1}
    with Session(app, ctx) as session:
        sid = session.id()
        assert sid is not None and re.fullmatch(rf"{re.escape(app)}-[A-Za-z0-9]{{6}}", sid)
        # common_data: the BSON ObjectRef of the bytes cloudpickle(ctx) under <app>/<sid>
        ref = _ref_of(session)
        assert ref.key.startswith(f"{app}/{sid}/")
        stored = get_object(ref)
        assert isinstance(stored, bytes) and cloudpickle.loads(stored) == ctx
        assert flame_connection.get_session(sid).common_data() == ref.encode()

        assert session.context() == ctx
        assert session.invoke(("ctx", None), timeout=WAIT) == ctx
        updated = {"history": ["hello", "world"], "n": 2}
        assert session.invoke(("update", updated)) == updated
        assert session.invoke(("ctx", None)) == updated  # kept across tasks
        assert session.context() == updated  # and seen by the client
        assert get_object(_ref_of(session)) == cloudpickle.dumps(updated)
    assert session.context() is None  # closed


def test_zero_parameter_entrypoint(service_app: AppFactory) -> None:
    app = service_app("zero")
    with Session(app, ctx="shared") as session:
        assert session.invoke(None, timeout=WAIT) == {"calls": 1, "ctx": "shared"}
        # The input is ignored whatever it is.
        assert session.invoke("ignored") == {"calls": 2, "ctx": "shared"}


def test_async_entrypoint_runs_on_one_loop_of_the_instance(service_app: AppFactory) -> None:
    app = service_app("async")
    with Session(app) as session:
        first = session.invoke(21, timeout=WAIT)
        second = session.invoke("ab")
    assert first["doubled"] == 42 and second["doubled"] == "abab"
    assert first["loop"] == second["loop"]


def test_close_and_context_manager_close_the_session(
    service_app: AppFactory, flame_connection: flamepy.Connection
) -> None:
    app = service_app("one")
    session = Session(app, ctx=[1])
    sid = session.id()
    assert sid is not None
    assert session.invoke(("echo", 1), timeout=WAIT) == 1
    session.close()
    assert flame_connection.get_session(sid).state == SessionState.CLOSED
    assert session.id() is None and session.context() is None
    with pytest.raises(InvalidStateError, match="closed"):
        session.invoke(("echo", 2))
    session.close()  # a no-op

    with Session(app) as other:
        other_id = other.id()
    assert other_id is not None
    assert flame_connection.get_session(other_id).state == SessionState.CLOSED


def test_session_opened_by_id(service_app: AppFactory) -> None:
    app = service_app("one")
    with Session(app, ctx={"k": "v"}) as first:
        sid = first.id()
        assert sid is not None
        assert first.invoke(("update", {"k": "w"}), timeout=WAIT) == {"k": "w"}
        second = Session(session_id=sid)
        assert second.name == app and second.id() == sid
        assert second.context() == {"k": "w"}
        assert second.invoke(("ctx", None), timeout=WAIT) == {"k": "w"}
    with pytest.raises(NotFoundError):
        Session(session_id=f"{app}-nosuch")


def test_unknown_application_leaves_no_context_behind(service_env: object) -> None:
    app = f"svc-missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(flamepy.FlameError, match="not found"):  # Internal, as Flame's
        Session(app, ctx={"big": "context"})
    client = _cache_client.client_for(flamepy.FlameContext().cache_endpoint)
    sentinel = flamepy.put_object(f"{app}/sentinel", "listed")
    assert client.keys(f"{app}/") == [sentinel.key]  # the context object is gone
    flamepy.delete_objects(f"{app}/sentinel")


def test_async_session(service_app: AppFactory, flame_connection: flamepy.Connection) -> None:
    app = service_app("one")

    async def main() -> tuple[object, ...]:
        session = AsyncSession(app, {"n": 0})
        assert session.id() is None  # nothing opened yet
        async with session:
            sid = session.id()
            results = await asyncio.gather(*(session.invoke(("echo", i)) for i in range(4)))
            updated = await session.invoke(("update", {"n": 1}))
            ctx = await session.context()
        with pytest.raises(InvalidStateError):
            await session.invoke(("echo", 0))
        other = await AsyncSession.create(app)
        try:
            none_ctx = await other.context()
        finally:
            await other.close()
        return sid, results, updated, ctx, none_ctx

    sid, results, updated, ctx, none_ctx = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert results == [0, 1, 2, 3]
    assert updated == ctx == {"n": 1} and none_ctx is None
    assert isinstance(sid, str)
    assert flame_connection.get_session(sid).state == SessionState.CLOSED


# -- no cluster needed ------------------------------------------------------------------------


def test_session_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="either name"):
        Session()
    with pytest.raises(InvalidArgumentError, match="mutually exclusive"):
        Session("app", session_id="app-abcdef")
    with pytest.raises(InvalidArgumentError, match="either name"):
        AsyncSession()
    with pytest.raises(InvalidArgumentError, match="unknown resource gpus"):
        AsyncSession("app", resreq={"gpus": 1})


def test_resreq_dict_as_in_0_6() -> None:
    gib = 1024**3
    assert resource_requirement({"cpu": 16, "memory": "64g", "gpu": 4}) == ResourceRequirement(
        16, 64 * gib, 4
    )
    assert resource_requirement({"mem": "512Mi"}) == ResourceRequirement(0, 512 * 1024**2, 0)
    assert resource_requirement({"memory": 1000}) == ResourceRequirement(0, 1000, 0)
    req = ResourceRequirement(cpu=1)
    assert resource_requirement(req) is req and resource_requirement(None) is None
    assert [parse_memory(s) for s in ("1k", "1KB", "1kib", "2 G", "1.5g", "7")] == [
        1024,
        1024,
        1024,
        2 * gib,
        int(1.5 * gib),
        7,
    ]
    with pytest.raises(InvalidArgumentError, match="invalid memory size"):
        parse_memory("lots")


def test_entrypoint_shapes() -> None:
    instance = FlameInstance()

    def two(a: object, b: object) -> None: ...

    def star(*args: object) -> None: ...

    def kw(*, a: object) -> None: ...

    for bad in (two, star, kw):
        with pytest.raises(InvalidArgumentError):
            instance.entrypoint(bad)

    def one(x: int) -> int:
        return x + 1

    assert instance.entrypoint(one) is one  # a decorator returns the function


def test_instance_hooks_without_a_cluster() -> None:
    """The hooks flmrun calls, with flmrun's own contexts."""
    import flmrun

    instance = FlameInstance()

    @instance.entrypoint
    async def double(x: int) -> int:
        return x * 2

    service = instance.as_service()
    assert isinstance(service, flmrun.FlameService)
    app = flmrun.ApplicationContext(name="app")
    service.on_session_enter(flmrun.SessionContext(None, "app-1", app))
    task = flmrun.TaskContext(task_id="1", session_id="app-1", input=cloudpickle.dumps(4))
    output = service.on_task_invoke(task)
    assert isinstance(output, bytes) and cloudpickle.loads(output) == 8
    assert instance.context() is None
    instance.update_context("nowhere to go")  # ignored, as in 0.6
    service.on_session_leave()


def test_run_needs_an_entrypoint_and_flmrun(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FlameUsageError, match="no entrypoint"):
        FlameInstance().run()
    instance = FlameInstance()
    instance.entrypoint(lambda: None)
    monkeypatch.setitem(sys.modules, "flmrun", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install flmrun-0\.1\.0-py3-none-any\.whl"):
        instance.run()
    with pytest.raises(ImportError, match=r"pip install flmrun-0\.1\.0-py3-none-any\.whl"):
        instance.as_service()


def test_module_paths_of_0_6() -> None:
    # flamepy.cache: 0.6's names, the very objects of flamepy.core.cache
    names_06 = {
        "ObjectRef",
        "delete_objects",
        "get_object",
        "patch_object",
        "put_object",
        "update_object",
    }
    assert names_06 <= set(flamepy.cache.__all__)
    for name in flamepy.cache.__all__:
        assert getattr(flamepy.cache, name) is getattr(core_cache, name)
    # flamepy.util.short_name: "<prefix>-<length [A-Za-z0-9]>"
    assert flamepy.util.__all__ == ["short_name"]
    names = {flamepy.util.short_name("app") for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"app-[A-Za-z0-9]{6}", n) for n in names)
    assert re.fullmatch(r"x-[A-Za-z0-9]{10}", flamepy.util.short_name("x", length=10))
    assert flamepy.util.short_name("p", 0) == "p-"
    # flamepy.service: 0.6's two names plus our asyncio form
    assert set(flamepy.service.__all__) == {"FlameInstance", "Session", "AsyncSession"}


# -- against Flame's own SDK (flamepy 0.6.0) ------------------------------------------------------

PEER_SESSION = """
import json
import sys

import flamepy
from flamepy.service import Session

app = sys.argv[1]
out = {"flamepy": flamepy.__file__}
with Session(app, {"history": ["hi"]}) as session:
    out["id"] = session.id()
    value = {"k": [1, 2, (3, b"x")]}
    out["echo_ok"] = session.invoke(("echo", value)) == value
    out["none"] = session.invoke(("none", None))
    out["ctx"] = session.invoke(("ctx", None))
    out["updated"] = session.invoke(("update", {"history": ["hi", "there"]}))
    out["client_ctx"] = session.context()
    try:
        session.invoke(("fail", 3))
    except Exception as exc:
        out["failure"] = [type(exc).__name__, str(exc)]
with Session(app) as plain:
    out["plain_ctx"] = plain.context()
    out["plain_echo"] = plain.invoke(("echo", "x"))
out["closed_id"] = session.id()
print(json.dumps(out, default=repr))
"""


def _peer_python() -> str:
    if not PEER_PYTHON.is_file() or not os.access(PEER_PYTHON, os.X_OK):
        pytest.skip(f"the peer venv (flamepy 0.6.0) is not there: {PEER_PYTHON}")
    return str(PEER_PYTHON)


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterThread]:
    """A cluster the peer can reach: loopback TCP without a token (it sends none).

    While it starts and runs this process has no FLAME_* variables and its own HOME,
    so the instances it launches see only what the cluster gives them."""
    _peer_python()
    home = tmp_path_factory.mktemp("peer-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("FLAME_")]:
            mp.delenv(name)
        mp.setenv("HOME", str(home))
        config = LocalClusterConfig(host="127.0.0.1", no_auth=True, delay_release=2)
        thread = ClusterThread(config).start()
        try:
            yield thread
        finally:
            thread.stop()
    assert thread.leftover_processes() == []


@pytest.fixture
def tcp_connection(tcp_cluster: ClusterThread) -> Iterator[flamepy.Connection]:
    conn = flamepy.Connection.connect(tcp_cluster.endpoint)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def ours_on_tcp(tcp_cluster: ClusterThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Our shared connection and cache clients pointed at ``tcp_cluster``."""
    for name in [k for k in os.environ if k.startswith("FLAME_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FLAME_ENDPOINT", tcp_cluster.endpoint)
    assert tcp_cluster.cache_endpoint is not None
    monkeypatch.setenv("FLAME_CACHE_ENDPOINT", tcp_cluster.cache_endpoint)
    _client.reset_default_connection()
    _cache_client.reset_clients()
    try:
        yield
    finally:
        _client.reset_default_connection()
        _cache_client.reset_clients()


def test_peer_session_drives_our_instance(
    tcp_cluster: ClusterThread, tcp_connection: flamepy.Connection, tmp_path: Path
) -> None:
    python = _peer_python()
    app = _register(tcp_connection, tmp_path, sys.executable, "one")
    try:
        script = tmp_path / "peer_session.py"
        script.write_text(PEER_SESSION)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAME_", "PYTHON"))}
        env.pop("VIRTUAL_ENV", None)
        env["HOME"] = str(tmp_path)
        env["FLAME_ENDPOINT"] = tcp_cluster.endpoint
        env["FLAME_CACHE_ENDPOINT"] = tcp_cluster.cache_endpoint or ""
        proc = subprocess.run(
            [python, str(script), app],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=PEER_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert tcp_connection.get_session(seen["id"]).state == SessionState.CLOSED
    finally:
        tcp_connection.unregister_application(app)

    assert "site-packages" in seen["flamepy"]  # the peer's own SDK, not ours
    assert re.fullmatch(rf"{re.escape(app)}-[A-Za-z0-9]{{6}}", seen["id"])
    assert seen["echo_ok"] is True
    assert seen["none"] is None
    assert seen["ctx"] == {"history": ["hi"]}
    assert seen["updated"] == seen["client_ctx"] == {"history": ["hi", "there"]}
    assert seen["failure"][0] == "FlameError"
    assert seen["plain_ctx"] is None and seen["plain_echo"] == "x"
    assert seen["closed_id"] is None


def test_our_session_drives_peer_instance(
    ours_on_tcp: None, tcp_connection: flamepy.Connection, tmp_path: Path
) -> None:
    python = _peer_python()
    apps = [_register(tcp_connection, tmp_path, python, kind) for kind in ("one", "zero", "async")]
    one, zero, async_app = apps
    try:
        with Session(one, {"history": ["hi"]}) as session:
            value = {"k": [1, 2, (3, b"x")]}
            assert session.invoke(("echo", value), timeout=WAIT) == value
            assert session.invoke(("none", None)) is None
            assert session.invoke(("ctx", None)) == {"history": ["hi"]}
            updated = {"history": ["hi", "there"]}
            assert session.invoke(("update", updated)) == updated
            assert session.context() == updated
            with pytest.raises(TaskFailedError, match="asked to fail: 3"):
                session.invoke(("fail", 3))
            # The instance runs the peer's SDK.
            where = session.invoke(("where", None))
            assert "site-packages" in where and "conformance-peer" in where
        with Session(zero, ctx="ctx") as session:
            assert session.invoke(None, timeout=WAIT) == {"calls": 1, "ctx": "ctx"}
        with Session(async_app) as session:
            assert session.invoke(5, timeout=WAIT)["doubled"] == 10
    finally:
        for app in apps:
            tcp_connection.unregister_application(app)
