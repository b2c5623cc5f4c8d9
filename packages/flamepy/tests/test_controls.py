"""Controls (issue "see and steer", item 3): ``Runner.map``, ``retries``/``retry_on``
and ``timeout`` on ``service()``, and the embedded cluster's capacity.

Against the real local cluster and real flmrun instances: user code lives in a
module of a temporary project directory that the Runner packages.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from flame_testkit import ClusterThread
from flamepy import (
    AsyncRunner,
    ConfigError,
    ConfigWarning,
    FlameContext,
    FlameTimeoutError,
    InvalidArgumentError,
    Runner,
    TaskFailedError,
)
from flamepy.runner._map import DEFAULT_MAX_IN_FLIGHT

WAIT = 120.0

USERLIB = """
import os
import time


def square(x):
    return x * x


def add(a, b):
    return a + b


def tracked(folder, x, seconds=0.2):
    mark = os.path.join(folder, f"{x}.run")
    open(mark, "w").close()
    running = len([n for n in os.listdir(folder) if n.endswith(".run")])
    with open(os.path.join(folder, f"{x}.seen"), "w") as f:
        f.write(str(running))
    time.sleep(seconds)
    os.remove(mark)
    return x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def die_once(marker, value):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return value


def die_always(log):
    with open(log, "a") as f:
        f.write("x")
    os._exit(1)


def flaky(folder, failures):
    n = len(os.listdir(folder))
    if n < failures:
        open(os.path.join(folder, str(n)), "w").close()
        raise ValueError(f"attempt {n}")
    return n


def nap(seconds):
    time.sleep(seconds)
    return seconds


class Acc:
    def __init__(self):
        self.total = 0

    def add(self, x):
        self.total += x
        return self.total
"""


@pytest.fixture
def lib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flame_env: ClusterThread
) -> Iterator[ModuleType]:
    name = f"ctllib_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "project"
    root.mkdir()
    (root / f"{name}.py").write_text(USERLIB)
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def _app() -> str:
    return f"rc-{uuid.uuid4().hex[:8]}"


# -- map --------------------------------------------------------------------------------


def test_map_gives_ordered_results_of_a_function_and_of_a_service(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        assert list(rr.map(lib.square, range(20))) == [x * x for x in range(20)]
        assert list(rr.map(lib.add, [1, 2, 3], [10, 20])) == [11, 22]  # zip: shortest
        add = rr.service(lib.add)
        assert list(rr.map(add, range(5), range(5), max_in_flight=2)) == [0, 2, 4, 6, 8]
        acc = rr.service(lib.Acc)
        assert list(rr.map(acc.add, [1, 2, 3, 4])) == [1, 3, 6, 10]  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="methods"):
            rr.map(acc, [1])
        with pytest.raises(InvalidArgumentError, match="max_in_flight"):
            rr.map(lib.square, [1], max_in_flight=0)
    assert DEFAULT_MAX_IN_FLIGHT >= 1


def test_map_keeps_at_most_max_in_flight_calls_and_draws_lazily(
    lib: ModuleType, tmp_path: Path
) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    drawn: list[int] = []

    def items() -> Iterator[int]:
        for i in range(6):
            drawn.append(i)
            yield i

    with Runner(_app()) as rr:
        it = rr.map(lib.tracked, [str(folder)] * 6, items(), max_in_flight=1)
        assert drawn == [0]  # the first call is made at once, no more
        assert next(it) == 0
        assert drawn == [0, 1]
        assert list(it) == [1, 2, 3, 4, 5]
    seen = [int((folder / f"{i}.seen").read_text()) for i in range(6)]
    assert seen == [1] * 6  # never two calls at once

    drawn.clear()
    with Runner(_app()) as rr:
        it = rr.map(lib.square, items(), max_in_flight=3)
        assert drawn == [0, 1, 2]
        assert next(it) == 0 and drawn == [0, 1, 2, 3]


def test_map_raises_a_failing_call_when_its_result_is_reached(lib: ModuleType) -> None:
    drawn: list[int] = []

    def items() -> Iterator[int]:
        for i in range(100):
            drawn.append(i)
            yield i

    with Runner(_app()) as rr:
        it = rr.map(lib.fail_on, items(), [2] * 100, max_in_flight=4)
        assert next(it) == 0 and next(it) == 1
        with pytest.raises(ValueError, match="bad item 2"):
            next(it)
        assert list(it) == []  # the map is over; the rest were cancelled or ignored
        assert len(drawn) <= 7


def test_async_map(lib: ModuleType) -> None:
    async def main() -> tuple[list[int], str]:
        async with AsyncRunner(_app()) as rr:
            out = [v async for v in rr.map(lib.square, range(10), max_in_flight=3)]
            try:
                async for _ in rr.map(lib.fail_on, range(5), [1] * 5):
                    pass
            except ValueError as exc:
                return out, str(exc)
            return out, "no error"

    assert asyncio.run(main()) == ([x * x for x in range(10)], "bad item 1")


# -- retries ----------------------------------------------------------------------------


def test_a_call_whose_instance_died_is_retried(lib: ModuleType, tmp_path: Path) -> None:
    with Runner(_app()) as rr:
        once = rr.service(lib.die_once)
        with pytest.raises(TaskFailedError, match="exited with code 1"):
            once(str(tmp_path / "a"), 7).get(WAIT)  # no retries: the loss is raised
        retried = rr.service(lib.die_once, retries=1)
        assert retried.retries == 1
        assert retried(str(tmp_path / "b"), 7).get(WAIT) == 7
        assert (tmp_path / "b").exists()


def test_retries_give_up_after_n(lib: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    with Runner(_app()) as rr:
        dies = rr.service(lib.die_always, retries=2)
        with pytest.raises(TaskFailedError, match="exited with code 1"):
            dies(str(log)).get(WAIT)
    assert log.read_text() == "xxx"  # the first attempt and two retries


def test_retry_on_names_the_exceptions_that_are_retried(lib: ModuleType, tmp_path: Path) -> None:
    def folder(name: str) -> str:
        path = tmp_path / name
        path.mkdir()
        return str(path)

    with Runner(_app()) as rr:
        ok = rr.service(lib.flaky, retries=2, retry_on=(ValueError,))
        assert ok(folder("ok"), 2).get(WAIT) == 2
        too_few = rr.service(lib.flaky, retries=1, retry_on=ValueError)
        with pytest.raises(ValueError, match="attempt 1"):
            too_few(folder("few"), 2).get(WAIT)
        other = rr.service(lib.flaky, retries=3, retry_on=(KeyError,))
        with pytest.raises(ValueError, match="attempt 0"):
            other(folder("other"), 2).get(WAIT)
        with pytest.raises(InvalidArgumentError, match="retry_on"):
            rr.service(lib.flaky, retries=1, retry_on=("ValueError",))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="retries"):
            rr.service(lib.flaky, retries=-1)


# -- timeout ----------------------------------------------------------------------------


def test_a_call_over_its_timeout_raises_while_a_fast_one_succeeds(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        nap = rr.service(lib.nap, timeout=3)
        assert nap.timeout == 3.0
        slow = nap(6)
        fast = nap(0.1)
        started = time.monotonic()
        with pytest.raises(FlameTimeoutError, match=r"nap\(\) did not finish within 3s"):
            slow.get(WAIT)
        assert time.monotonic() - started < 5
        assert fast.get(WAIT) == 0.1
        with pytest.raises(InvalidArgumentError, match="timeout"):
            rr.service(lib.nap, timeout=0)


def test_async_timeout(lib: ModuleType) -> None:
    async def main() -> str:
        async with AsyncRunner(_app()) as rr:
            nap = rr.service(lib.nap, timeout=2)
            try:
                await nap(5).get()
            except FlameTimeoutError as exc:
                return str(exc)
            return "no timeout"

    assert "did not finish within 2s" in asyncio.run(main())


# -- the embedded cluster's capacity ----------------------------------------------------

CAPACITY = """
import flamepy
print(flamepy.list_nodes()[0].capacity.cpu)
"""

RUNNER_CAPACITY = """
import warnings, flamepy
from flamepy import Runner
with Runner("cap", local_capacity=3):
    print(flamepy.list_nodes()[0].capacity.cpu)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Runner("cap2", local_capacity=5):
            pass
    print(any("local_capacity=5 is ignored" in str(w.message) for w in caught))
"""


def _run(code: str, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env.update(HOME=str(home), **extra)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _config(tmp_path: Path, capacity: object) -> Path:
    path = tmp_path / "flame.yaml"
    path.write_text(
        f"current-context: local\ncontexts:\n  - name: local\n    local:\n"
        f"      capacity: {capacity}\n"
    )
    return path


def test_the_capacity_comes_from_flame_yaml(tmp_path: Path) -> None:
    config = _config(tmp_path, 3)
    assert FlameContext(path=config, environ={}).local.capacity == 3
    proc = _run(CAPACITY, tmp_path, FLAME_CONFIG=str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"
    assert "unknown key" not in proc.stderr
    env_wins = _run(CAPACITY, tmp_path, FLAME_CONFIG=str(config), FLAME_LOCAL_CAPACITY="2")
    assert env_wins.stdout.strip() == "2", env_wins.stderr
    with pytest.raises(ConfigError, match=r"contexts\[0\]\.local\.capacity"):
        FlameContext(path=_config(tmp_path, 0), environ={})
    with pytest.raises(ConfigError, match="whole number"):
        FlameContext(path=_config(tmp_path, '"lots"'), environ={})
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(_config(tmp_path, 3).read_text().replace("capacity", "capacty"))
    with pytest.warns(ConfigWarning, match=r"local\.capacty; did you mean 'capacity'"):
        assert FlameContext(path=misspelt, environ={}).local.capacity is None


def test_the_capacity_comes_from_the_runner_that_starts_the_cluster(tmp_path: Path) -> None:
    proc = _run(RUNNER_CAPACITY, tmp_path, FLAME_LOCAL_CAPACITY="2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "True"]
    with pytest.raises(InvalidArgumentError, match="local_capacity=0"):
        Runner("cap", local_capacity=0)


def test_local_capacity_on_a_configured_endpoint_is_ignored_with_a_warning(
    lib: ModuleType,
) -> None:
    with (
        pytest.warns(ConfigWarning, match="local_capacity=4 is ignored"),
        Runner(_app(), local_capacity=4) as rr,
    ):
        assert rr.service(lib.square)(3).get(WAIT) == 9
