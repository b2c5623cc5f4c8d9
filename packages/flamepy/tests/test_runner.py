"""The Runner against a real local cluster: packaging, installation, calls, cleanup.

User code lives in a module written into a temporary project directory; the
Runner packages that directory, so the executor imports the module from the
uploaded package exactly as it would for a user.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pyarrow.flight as flight
import pytest

import flamepy
import flamepy._cache.client
from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy import (
    AlreadyExistsError,
    AsyncRunner,
    ConfigError,
    InvalidArgumentError,
    NotFoundError,
    RemoteError,
    Runner,
)
from flamepy._errors import RemoteTraceback

WAIT = 60.0

USERLIB = '''
import os
import threading


def add(a, b):
    return a + b


def total(values):
    """Sum numbers found in nested lists, tuples and dicts."""
    if isinstance(values, dict):
        return sum(total(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return sum(total(v) for v in values)
    return values


def describe(a, b=0, *, scale=1):
    return (a + b) * scale


def listing():
    root = os.environ["FLAME_PACKAGE_SRC"]
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def pid_after(seconds):
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def version():
    return VERSION


VERSION = 1


class Counter:
    def __init__(self, c=0):
        self._count = c

    def add(self, a):
        self._count += a

    def get_counter(self):
        return self._count


class MyError(Exception):
    pass


def fail(text):
    raise MyError(text)


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def fail_unpicklable():
    raise Unpicklable()


class NeedsTwo(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def fail_two():
    raise NeedsTwo(7, "broken")


def blob(n, i):
    return bytes([i]) * n


def double(x):
    return 2 * x


def nested(x):
    from flamepy import Runner

    with Runner("inner") as inner:  # the same name in every instance
        return inner.service(double)(x).get(60)


def small_array(n):
    import numpy as np

    return np.arange(n, dtype=np.int32)


def small_table(n):
    import pyarrow as pa

    return pa.table({"x": list(range(n))})


class Holder:
    def __init__(self):
        self.config = {"name": "x", "guard": threading.Lock()}

    def ping(self):
        return "pong"
'''


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flame_env: ClusterThread
) -> Iterator[tuple[Path, ModuleType]]:
    """A project directory holding a fresh copy of the user library, as the cwd."""
    name = f"userlib_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "project"
    root.mkdir()
    (root / f"{name}.py").write_text(USERLIB)
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    module = importlib.import_module(name)
    yield root, module
    sys.modules.pop(name, None)


def _app() -> str:
    return f"rt-{uuid.uuid4().hex[:8]}"


def test_the_snippet_prints_3_4_14_28(project: tuple[Path, ModuleType]) -> None:
    _, lib = project
    with Runner(_app()) as rr:
        assert rr.service(lib.add)(1, 2).get(WAIT) == 3
        c = rr.service(lib.Counter)
        c.add(1)
        c.add(3)
        assert c.get_counter().get(WAIT) == 4
        o = rr.service(lib.Counter(10))
        o.add(1)
        o.add(3)
        r = o.get_counter()
        assert r.get(WAIT) == 14
        o.add(r)
        assert o.get_counter().get(WAIT) == 28


def test_the_snippet_with_async_runner(project: tuple[Path, ModuleType]) -> None:
    _, lib = project

    async def main() -> list[int]:
        async with AsyncRunner(_app()) as rr:
            out = [await rr.service(lib.add)(1, 2).get()]
            c = rr.service(lib.Counter)
            c.add(1)
            c.add(3)
            out.append(await c.get_counter().get())
            o = rr.service(lib.Counter(10))
            o.add(1)
            o.add(3)
            r = o.get_counter()
            out.append((await r).get())
            o.add(r)
            out.append(await o.get_counter().get())
            return out

    assert asyncio.run(main()) == [3, 4, 14, 28]


SEED_ASYNC = """
import asyncio
from flamepy import FlameAsyncRunner


def sum(a: int, b: int) -> int:  # as the seed documents define it
    return a + b


async def main():
    async with FlameAsyncRunner("test") as runner:
        sum_s = runner.service(sum)
        res_r = await sum_s(1, 2)
        print(res_r.get()) # The output is 3

asyncio.run(main())
"""


def test_case6_the_seeds_async_snippet_runs_verbatim(
    project: tuple[Path, ModuleType], flame_env: ClusterThread
) -> None:
    """Case 6 of the Runner correctness issue: ``await svc(...)`` is still an
    ObjectExpr-like result: ``.get()`` is the value, and it passes by reference."""
    root, lib = project
    (root / "seed_async.py").write_text(SEED_ASYNC)
    proc = subprocess.run(
        [sys.executable, "seed_async.py"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3"]

    async def by_reference() -> tuple[int, bool]:
        async with AsyncRunner(_app()) as rr:
            blob = await rr.service(lib.total)([1, 2, 3])
            chained = await rr.service(lib.add)(blob, 10).get()
            return chained, isinstance(blob, flamepy.ObjectResult)

    assert asyncio.run(by_reference()) == (16, True)


def test_class_instantiated_remotely_with_constructor_arguments(
    project: tuple[Path, ModuleType],
) -> None:
    _, lib = project
    with Runner(_app()) as rr:
        assert rr.service(lib.Counter, args=(5,)).get_counter().get(WAIT) == 5
        kw = rr.service(lib.Counter, kwargs={"c": 7})
        kw.add(1)
        assert kw.get_counter().get(WAIT) == 8
        assert kw.methods == ["add", "get_counter"]
        with pytest.raises(InvalidArgumentError, match="only valid for a class"):
            rr.service(lib.add, args=(1,))


def test_keyword_arguments(project: tuple[Path, ModuleType]) -> None:
    _, lib = project
    with Runner(_app()) as rr:
        describe = rr.service(lib.describe)
        assert describe(1, b=2, scale=10).get(WAIT) == 30
        assert describe(a=4).get(WAIT) == 4


def test_nested_futures_as_arguments(project: tuple[Path, ModuleType]) -> None:
    _, lib = project
    with Runner(_app()) as rr:
        add = rr.service(lib.add)
        total = rr.service(lib.total)
        a, b, c = add(1, 2), add(10, 20), add(100, 200)
        ref = rr.put_object(1000)
        nested = total([a, (b, {"k": c}), {"ref": ref}])
        assert nested.get(WAIT) == 1333
        chained = add(add(add(1, 1), 1), a)  # a chain of futures
        assert chained.get(WAIT) == 6
        assert isinstance(a.ref(), flamepy.ObjectRef)


def test_runner_helpers_get_wait_select(project: tuple[Path, ModuleType]) -> None:
    _, lib = project
    with Runner(_app()) as rr:
        add = rr.service(lib.add)
        futures = [add(i, i) for i in range(10)]
        rr.wait(futures, WAIT)
        assert all(f.done() for f in futures)
        assert rr.get(futures, WAIT) == [2 * i for i in range(10)]
        assert sorted(f.get() for f in rr.select(futures, WAIT)) == [2 * i for i in range(10)]
        refs = rr.ref(futures[:2])
        assert flamepy.get_object(refs[1]) == 2


def test_excludes_and_flameignore_are_honoured(project: tuple[Path, ModuleType]) -> None:
    root, lib = project
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"0" * 1000)
    (root / "data" / "keep.txt").write_text("keep")
    (root / "secret.txt").write_text("s")
    (root / "notes.md").write_text("n")
    (root / ".flameignore").write_text("data/*\n!data/keep.txt\n")
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "x.pyc").write_bytes(b"c")
    with Runner(_app(), excludes=["secret.txt"]) as rr:
        received = rr.service(lib.listing)().get(WAIT)
    assert f"{lib.__name__}.py" in received and "notes.md" in received
    assert "data/keep.txt" in received and "pyproject.toml" in received  # generated
    for excluded in ("data/big.bin", "secret.txt", "__pycache__/x.pyc"):
        assert excluded not in received


def test_unchanged_tree_is_not_uploaded_again(
    project: tuple[Path, ModuleType], tmp_path: Path, flame_connection: flamepy.Connection
) -> None:
    _, lib = project
    store = tmp_path / "store"
    store.mkdir()
    name = _app()
    first = Runner(name, storage=store.as_uri())
    try:
        assert first.package_uploaded
        package = Path(first.package_url.removeprefix("file://"))  # type: ignore[union-attr]
        stamp = package.stat().st_mtime_ns
        # The registration is lost (an operator removed it); the package is still there.
        flame_connection.unregister_application(name)
        with Runner(name, storage=store.as_uri()) as second:
            assert second.package_url == first.package_url
            assert not second.package_uploaded
            assert second.service(lib.add)(2, 2).get(WAIT) == 4
        assert package.stat().st_mtime_ns == stamp
        assert package.exists()  # not the second Runner's to delete
    finally:
        first.close()
    assert package.exists()  # kept, so that the next run skips the upload
    assert [p.name for p in store.iterdir()] == [package.name]


CASE8_PROGRAM = """
import sys
from flamepy import Runner
import {module}

with Runner(sys.argv[1]) as rr:
    print(
        rr.service({module}.version)().get(60),
        rr.package_built,
        rr.package_uploaded,
        rr.package_url,
    )
"""


def test_case8_the_next_process_skips_the_upload_of_unchanged_code(
    project: tuple[Path, ModuleType], flame_cluster: ClusterThread
) -> None:
    root, lib = project
    (root / "main.py").write_text(CASE8_PROGRAM.format(module=lib.__name__))
    name = _app()

    def run() -> tuple[str, str, str, str]:
        done = subprocess.run(
            [sys.executable, "main.py", name],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        version, built, uploaded, url = done.stdout.split()
        return version, built, uploaded, url

    cache = flamepy._cache.client.client_for(flame_cluster.cache_endpoint)

    def stored() -> list[str]:
        return sorted(cache.keys(f"{name}/pkg/"))

    first = run()
    assert first[:3] == ("1", "True", "True")
    assert len(stored()) == 1  # kept after the first process exited
    # A new process, an unchanged tree: neither built nor uploaded.
    assert run() == ("1", "False", "False", first[3])
    source = root / f"{lib.__name__}.py"
    source.write_text(source.read_text().replace("VERSION = 1", "VERSION = 2"))
    third = run()
    assert third[:3] == ("2", "True", "True") and third[3] != first[3]
    assert stored() == [f"{name}/pkg/{third[3].rsplit('/', 1)[1]}"]  # the old one pruned
    # The same bytes written again (same size; the mtime set back): ctime still differs,
    # so the tree is built again, and its package, already stored, is not uploaded.
    stat = source.stat()
    source.write_text(source.read_text())
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run() == ("2", "True", "False", third[3])
    # Other bytes of the same size under the old mtime: never stale code.
    source.write_text(source.read_text().replace("VERSION = 2", "VERSION = 3"))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size
    assert run()[:3] == ("3", "True", "True")


def test_case8_a_package_in_use_is_not_pruned(
    project: tuple[Path, ModuleType], flame_cluster: ClusterThread
) -> None:
    root, lib = project
    name = _app()
    cache = flamepy._cache.client.client_for(flame_cluster.cache_endpoint)
    with Runner(name) as old:
        source = root / f"{lib.__name__}.py"
        source.write_text(source.read_text().replace("VERSION = 1", "VERSION = 2"))
        with Runner(name) as new:
            assert new.package_uploaded and new.package_url != old.package_url
        # The newer Runner's exit left the older one's package: its application runs.
        assert len(cache.keys(f"{name}/pkg/")) == 2
        assert old.service(lib.version)().get(WAIT) == 1
    assert len(cache.keys(f"{name}/pkg/")) == 1  # bounded once both are gone


def test_edited_module_runs_the_new_code(project: tuple[Path, ModuleType]) -> None:
    root, lib = project
    with Runner(_app()) as rr:
        assert rr.service(lib.version)().get(WAIT) == 1
        first_url = rr.package_url
    source = root / f"{lib.__name__}.py"
    source.write_text(source.read_text().replace("VERSION = 1", "VERSION = 2"))
    importlib.reload(lib)
    with Runner(_app()) as rr:
        assert rr.package_url != first_url  # a new content hash
        assert rr.service(lib.version)().get(WAIT) == 2


def test_remote_exception_keeps_its_type_and_traceback(project: tuple[Path, ModuleType]) -> None:
    _, lib = project
    with Runner(_app()) as rr:
        future = rr.service(lib.fail)("bad input")
        with pytest.raises(lib.MyError, match="bad input") as info:
            future.get(WAIT)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "in fail" in cause.text and "raise MyError(text)" in cause.text
        assert isinstance(future.exception(WAIT), lib.MyError)
        with pytest.raises(RemoteError) as remote:
            rr.service(lib.fail_unpicklable)().get(WAIT)
        assert remote.value.type_name.endswith("Unpicklable")
        assert "holds a lock" in remote.value.message
        assert isinstance(remote.value.__cause__, RemoteTraceback)  # shown as the cause
        assert "in fail_unpicklable" in remote.value.__cause__.text


def test_case7_exceptions_and_arguments_are_handled_clearly(
    project: tuple[Path, ModuleType], tmp_path: Path
) -> None:
    """Case 7 of the Runner correctness issue: an exception whose constructor takes
    other arguments comes back as itself, with its remote traceback as the cause;
    arguments that mean nothing remotely are refused, naming the argument."""
    _, lib = project
    with Runner(_app()) as rr:
        with pytest.raises(lib.NeedsTwo, match="7: broken") as info:
            rr.service(lib.fail_two)().get(WAIT)
        assert (info.value.code, info.value.detail) == (7, "broken")
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "in fail_two" in info.value.__cause__.text
        add = rr.service(lib.add)
        (tmp_path / "data.txt").write_text("text")
        with (
            open(tmp_path / "data.txt") as fh,
            pytest.raises(InvalidArgumentError, match=r"argument args\[0\] is an open file"),
        ):
            add(fh, 1)
        with pytest.raises(InvalidArgumentError, match=r"argument b\[1\] is a lock"):
            add(1, b=[2, threading.Lock()])
        with pytest.raises(InvalidArgumentError, match="is a generator"):
            add(i for i in range(3))
        assert add(1, 2).get(WAIT) == 3  # the service still works


def test_unpicklable_service_fails_before_submission(
    project: tuple[Path, ModuleType], flame_connection: flamepy.Connection
) -> None:
    _, lib = project
    name = _app()
    with Runner(name) as rr:
        with pytest.raises(InvalidArgumentError) as info:
            rr.service(lib.Holder())
        assert "Holder.config['guard']" in info.value.message
        assert "lock" in info.value.message
        app = rr.application
        assert not [s for s in flame_connection.list_sessions() if s.application == app]


def test_missing_template_is_a_clear_error(project: tuple[Path, ModuleType]) -> None:
    with pytest.raises(NotFoundError, match="'no-such-template' is not registered"):
        Runner(_app(), template="no-such-template")


def test_missing_storage_directory_is_a_clear_error(
    project: tuple[Path, ModuleType], tmp_path: Path
) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="does not exist"):
        Runner(_app(), storage=missing.as_uri())


def test_two_runners_of_one_name_keep_apart(project: tuple[Path, ModuleType]) -> None:
    """Case 2 of the Runner correctness issue: each Runner registers its own
    application, so neither runs the other's code or cleans up the other's session."""
    _, lib = project
    name = _app()
    with Runner(name) as first:
        assert first.application.startswith(f"{name}-")
        with pytest.raises(AlreadyExistsError, match=name):
            Runner(name, fail_if_exists=True)
        with Runner(name) as second:
            assert second.application != first.application
            assert second.service(lib.add)(1, 2).get(WAIT) == 3
        # The second one's exit removed only its own application and session.
        assert first.service(lib.add)(2, 2).get(WAIT) == 4


def test_nothing_but_the_package_is_left_after_exit(
    project: tuple[Path, ModuleType],
    tmp_path: Path,
    flame_connection: flamepy.Connection,
    flame_env: ClusterThread,
) -> None:
    _, lib = project
    store = tmp_path / "store"
    store.mkdir()
    name = _app()
    with Runner(name, storage=store.as_uri()) as rr:
        o = rr.service(lib.Counter(1))
        o.add(1)
        rr.put_object({"shared": True})
        assert o.get_counter().get(WAIT) == 2
        name = rr.application
        sessions = [s.id for s in flame_connection.list_sessions() if s.application == name]
    assert flame_connection.get_application(name) is None
    # Only the package is left, named by its content, for the next run to reuse.
    assert [p.name for p in store.iterdir()] == [Path(rr.package_url or "").name]
    client = flight.FlightClient(flame_env.cache_endpoint)
    keys = [info.descriptor.path[0].decode() for info in client.list_flights()]
    assert not [k for k in keys if k.startswith(f"{name}/")]
    deadline = time.monotonic() + 30
    while [e for e in flame_connection.list_executors() if e.session_id in sessions]:
        assert time.monotonic() < deadline, "instances outlived the Runner"
        time.sleep(0.1)


def test_failure_inside_with_block_still_cleans_up(
    project: tuple[Path, ModuleType], flame_connection: flamepy.Connection
) -> None:
    _, lib = project
    name = _app()

    registered: list[str] = []

    def use_and_fail() -> None:
        with Runner(name) as rr:
            registered.append(rr.application)
            rr.service(lib.add)(1, 1).get(WAIT)
            raise RuntimeError("user bug")

    with pytest.raises(RuntimeError, match="user bug"):
        use_and_fail()
    assert flame_connection.get_application(registered[0]) is None


def test_thousand_futures_in_flight_need_no_threads(project: tuple[Path, ModuleType]) -> None:
    _, lib = project
    with Runner(_app()) as rr:
        add = rr.service(lib.add)
        add(0, 0).get(WAIT)  # warm up: session, instance, pools
        before = threading.active_count()
        futures = [add(i, 1) for i in range(1000)]
        during = threading.active_count()
        assert rr.get(futures, WAIT) == [i + 1 for i in range(1000)]
    assert during - before <= 2


def test_dependencies_do_not_deadlock_with_one_slot(
    project: tuple[Path, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, lib = project
    with ClusterThread(LocalClusterConfig(capacity=1, delay_release=1)) as small:
        monkeypatch.setenv("FLAME_ENDPOINT", small.endpoint)
        monkeypatch.setenv("FLAME_CACHE_ENDPOINT", small.cache_endpoint or "")
        with Runner(_app()) as rr:
            add = rr.service(lib.add)
            counter = rr.service(lib.Counter(0))  # keeps an instance while idle
            first = add(1, 2)
            counter.add(first)  # waits for `first` on the client, not on an executor
            second = add(counter.get_counter(), 10)
            assert second.get(WAIT) == 13
            assert counter.get_counter().get(WAIT) == 3
    assert small.leftover_processes() == []


def test_size_budget_lists_the_largest_entries(project: tuple[Path, ModuleType]) -> None:
    root, _ = project
    (root / "model.bin").write_bytes(b"\0" * 300_000)
    (root / "small.txt").write_text("s")
    with pytest.raises(InvalidArgumentError) as info:
        Runner(_app(), size_budget=100_000)
    message = info.value.message
    assert "over the 0.1 MB budget" in message
    assert message.index("model.bin") < message.index("small.txt")
    assert ".flameignore" in message  # says how to fix it


class _PackageStore(BaseHTTPRequestHandler):
    """A tiny HTTP package store: PUT, HEAD, GET and DELETE of files in memory."""

    files: dict[str, bytes] = {}
    log: list[str] = []

    def _reply(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_PUT(self) -> None:
        self.log.append(f"PUT {self.path}")
        self.files[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
        self._reply(201)

    def do_HEAD(self) -> None:
        self._reply(200 if self.path in self.files else 404)

    def do_GET(self) -> None:
        self.log.append(f"GET {self.path}")
        data = self.files.get(self.path)
        self._reply(200, data) if data is not None else self._reply(404)

    def do_DELETE(self) -> None:
        self.log.append(f"DELETE {self.path}")
        self._reply(204 if self.files.pop(self.path, None) is not None else 404)

    def log_message(self, *args: object) -> None:
        pass


def test_http_package_storage(project: tuple[Path, ModuleType]) -> None:
    _, lib = project
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PackageStore)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/packages/"
    try:
        with Runner(_app(), storage=base) as rr:
            assert rr.package_url is not None and rr.package_url.startswith(base)
            assert rr.service(lib.add)(20, 22).get(WAIT) == 42
            path = rr.package_url.removeprefix(f"http://127.0.0.1:{server.server_address[1]}")
            assert path in _PackageStore.files
        assert f"PUT {path}" in _PackageStore.log
        assert f"GET {path}" in _PackageStore.log  # the executor manager downloaded it
        assert f"DELETE {path}" in _PackageStore.log and path not in _PackageStore.files
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_case1_class_state_survives_a_burst_on_another_service(
    project: tuple[Path, ModuleType], flame_env: ClusterThread
) -> None:
    """Case 1 of the Runner correctness issue: a burst on another service takes every
    instance, the class service's idle instance is released for it, and its state
    comes back from the cache on the next instance instead of starting from 0."""
    _, lib = project
    with Runner(_app()) as rr:
        counter = rr.service(lib.Counter)
        for n in (1, 2, 3):
            counter.add(n)
        first = counter.get_counter().get(WAIT)
        assert first == 6
        capacity = flame_env.cluster.config.capacity
        slow = rr.service(lib.pid_after)
        pids = rr.get([slow(0.5) for _ in range(2 * capacity)], WAIT)
        assert len(set(pids)) == capacity  # the burst had every instance
        assert counter.get_counter().get(WAIT) == 6
        counter.add(4)
        assert counter.get_counter().get(WAIT) == 10


def test_case9_small_numpy_and_arrow_results_come_back_inline(
    project: tuple[Path, ModuleType],
) -> None:
    """Case 9 (an untested path): small numpy and Arrow results are decoded from the
    task's inline output, not fetched from the cache."""
    import numpy as np
    import pyarrow as pa

    _, lib = project
    with Runner(_app()) as rr:
        array = rr.service(lib.small_array)(10)
        table = rr.service(lib.small_table)(5)
        value = array.get(WAIT)
        assert isinstance(value, np.ndarray) and value.dtype == np.int32
        assert value.tolist() == list(range(10))
        assert array._call.result.result().inline  # it came back in the task output
        got = table.get(WAIT)
        assert isinstance(got, pa.Table) and got.column("x").to_pylist() == [0, 1, 2, 3, 4]
        assert table._call.result.result().inline


def test_case9_a_call_whose_session_closed_before_it_ran_is_cancelled(
    project: tuple[Path, ModuleType],
    flame_connection: flamepy.Connection,
    flame_env: ClusterThread,
) -> None:
    """Case 9 (an untested path): the call's task is Cancelled, and the future says so."""
    _, lib = project
    capacity = flame_env.cluster.config.capacity
    with Runner(_app()) as rr:
        hog = rr.service(lib.pid_after, warmup=capacity)
        hogs = [hog(4) for _ in range(capacity)]  # every slot busy for 4 s
        deadline = time.monotonic() + WAIT
        while True:
            sid = hog._core.opened_session_id()
            if sid is not None and flame_connection.get_session(sid).running == capacity:
                break
            assert time.monotonic() < deadline, "the hogs never all ran"
            time.sleep(0.01)
        slow = rr.service(lib.pid_after)
        future = slow(0)
        deadline = time.monotonic() + WAIT
        while True:  # its task exists, and no instance has taken it yet
            mine = [s for s in flame_connection.list_sessions() if s.id == slow._core.session_id]
            if mine and mine[0].pending == 1:
                break
            assert time.monotonic() < deadline, "the call's task never came"
            time.sleep(0.005)
        flame_connection.close_session(mine[0].id)
        with pytest.raises(flamepy.TaskCancelledError):
            future.get(WAIT)
        assert len(rr.get(hogs, WAIT)) == capacity


def test_case3_live_results_are_spilled_not_evicted(
    project: tuple[Path, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 3 of the Runner correctness issue: three 30 MB results in a cache of
    40 MB; the ones pushed out of memory are written to disk, not dropped."""
    _, lib = project
    config = LocalClusterConfig(cache_max_memory=40_000_000, delay_release=1)
    with ClusterThread(config) as small:
        for key, value in small.client_env({}).items():
            monkeypatch.setenv(key, value)
        with Runner(_app()) as rr:
            blob = rr.service(lib.blob)
            futures = [blob(30_000_000, i) for i in range(3)]
            rr.wait(futures, WAIT)
            for i, future in enumerate(futures):
                assert future.get(WAIT) == bytes([i]) * 30_000_000
            assert small.cluster.cache is not None
            assert small.cluster.cache.store.memory_used <= 2 * 30_000_000 + 4096
    assert small.leftover_processes() == []


def test_case5_nested_runners_in_parallel_do_not_deadlock(
    project: tuple[Path, ModuleType], flame_env: ClusterThread
) -> None:
    """Case 5 of the Runner correctness issue: one more outer call than the cluster
    has slots, each running a Runner of the same name.  The nested Runner inherits
    the endpoint and the package, and its services ask for no CPU (the caller waits
    for them), so they run although every slot holds an outer call."""
    _, lib = project
    capacity = flame_env.cluster.config.capacity
    with Runner(_app()) as rr:
        outer = rr.service(lib.nested)
        n = capacity + 1
        assert rr.get([outer(i) for i in range(n)], 120) == [2 * i for i in range(n)]
