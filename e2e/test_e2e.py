"""End to end, against any Flame cluster: sessions, the object cache, the Runner
(the seed's scenarios), failures and cleanup.

Only flamepy's public API is used, and only applications every Flame cluster
registers (flmping, flmrun), so the same tests check a real deployment.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import flamepy
from flamepy import AsyncRunner, Runner

WAIT = 120.0
MIB = 1024 * 1024

USERLIB = """
class Counter:
    def __init__(self, c=0):
        self._count = c

    def add(self, a):
        self._count += a

    def get_counter(self):
        return self._count


class Refused(Exception):
    pass


def add(a, b):
    return a + b


def size(data):
    return len(data)


def blob(n):
    return b"r" * n


def refuse(text):
    raise Refused(text)
"""


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def userlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flame_env: Any
) -> Iterator[ModuleType]:
    """A project directory with a user module in it, as the working directory."""
    name = f"e2e_userlib_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "project"
    root.mkdir()
    (root / f"{name}.py").write_text(USERLIB)
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


# -- sessions -----------------------------------------------------------------------


def test_sessions_run_tasks_on_flmping(flame_env: Any) -> None:
    with flamepy.create_session("flmping", common_data=b"cd") as session:
        assert session.invoke(b"hello", timeout=WAIT) == b"hello"
        futures = [session.run(f"t{i}".encode()) for i in range(50)]
        assert [f.result(timeout=WAIT) for f in futures] == [f"t{i}".encode() for i in range(50)]
        sid = session.id
    closed = flamepy.get_session(sid)
    assert closed.state == flamepy.SessionState.CLOSED
    assert closed.succeed == 51


# -- the object cache -----------------------------------------------------------------


def test_cache_objects_round_trip(flame_env: Any) -> None:
    prefix = f"{_name('e2e')}/s1"
    ref = flamepy.put_object(prefix, {"a": [1, 2, 3]})
    assert flamepy.get_object(ref) == {"a": [1, 2, 3]}
    newer = flamepy.update_object(ref, b"x" * (6 * MIB))  # over gRPC's 4 MiB message limit
    assert newer.version > ref.version
    assert flamepy.get_object(newer) == b"x" * (6 * MIB)
    flamepy.delete_objects(prefix)
    with pytest.raises(flamepy.NotFoundError):
        flamepy.get_object(newer)


# -- the Runner: the seed's scenarios -------------------------------------------------


def test_the_seed_snippet(userlib: ModuleType) -> None:
    with Runner(_name("e2e")) as rr:
        assert rr.service(userlib.add)(1, 2).get(WAIT) == 3
        counter = rr.service(userlib.Counter)  # a class, instantiated on the executor
        counter.add(1)
        counter.add(3)
        assert counter.get_counter().get(WAIT) == 4
        instance = rr.service(userlib.Counter(10))  # an instance: its state stays
        instance.add(1)
        instance.add(3)
        result = instance.get_counter()
        assert result.get(WAIT) == 14
        instance.add(result)  # a future as an argument
        assert instance.get_counter().get(WAIT) == 28


def test_large_arguments_and_results_go_through_the_cache(userlib: ModuleType) -> None:
    with Runner(_name("e2e")) as rr:
        assert rr.service(userlib.size)(b"a" * (8 * MIB)).get(WAIT) == 8 * MIB
        assert rr.service(userlib.blob)(6 * MIB).get(WAIT) == b"r" * (6 * MIB)


def test_many_calls_and_a_chain(userlib: ModuleType) -> None:
    with Runner(_name("e2e")) as rr:
        add = rr.service(userlib.add)
        assert rr.get([add(i, i) for i in range(500)], timeout=WAIT) == [2 * i for i in range(500)]
        total = add(0, 1)
        for _ in range(50):
            total = add(total, 1)
        assert total.get(WAIT) == 51


def test_a_remote_exception_keeps_its_type(userlib: ModuleType) -> None:
    with Runner(_name("e2e")) as rr:
        future = rr.service(userlib.refuse)("no thanks")
        with pytest.raises(userlib.Refused, match="no thanks") as info:
            future.get(WAIT)
        assert info.value.__cause__ is not None  # the remote traceback


def test_the_async_runner(userlib: ModuleType) -> None:
    async def main() -> int:
        async with AsyncRunner(_name("e2e")) as rr:
            add = rr.service(userlib.add)
            value: int = (await add(20, 22)).get()
            return value

    assert asyncio.run(main()) == 42


def test_a_runner_cleans_up_after_itself(userlib: ModuleType) -> None:
    with Runner(_name("e2e")) as rr:
        future = rr.service(userlib.blob)(2 * MIB)
        ref = future.ref(WAIT)  # kept in the cache until the Runner closes
        name = rr.application
        assert flamepy.get_application(name) is not None
    assert flamepy.get_application(name) is None
    mine = [s for s in flamepy.list_sessions() if s.application == name]
    assert all(s.state == flamepy.SessionState.CLOSED for s in mine)
    with pytest.raises(flamepy.NotFoundError):
        flamepy.get_object(ref)
