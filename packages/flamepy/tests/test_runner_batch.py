"""Batched submission against the real local cluster and real flmrun instances.

A burst of calls rides in a few tasks, a chain of dependent calls made at once
resolves on the executor, and every call still fails, orders and cancels on its
own as if it had its own task.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cloudpickle
import pytest

from flame_testkit import ClusterThread
from flamepy import AsyncRunner, FlameTimeoutError, RemoteError, Runner, TaskCancelledError
from flamepy.core.cache import ObjectRef, get_object
from flamepy.runner._batch import MAX_BATCH_CALLS

WAIT = 120.0

USERLIB = """
import os
import time


def inc(x):
    return x + 1


def nap(seconds):
    time.sleep(seconds)
    return seconds


def nap_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def meet(folder, n, timeout=60.0):
    # Returns once n instances are in the folder at the same time.
    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {os.listdir(folder)} came")
        time.sleep(0.01)
    return os.getpid()


def wait_for(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never came")
        time.sleep(0.01)
    return 0


def nap_or_meet(seconds, folder=None):
    return meet(folder, 2) if folder else nap_pid(seconds)


class Holder:
    def take(self, value):
        self.value = value
        return 1

    def lock_up(self):
        import threading

        self.value = threading.Lock()  # an unpicklable state
        return 1

    def ping(self):
        return 2


class Boom(Exception):
    pass


def check(x):
    if x % 7 == 3:
        raise Boom(f"bad {x}")
    return x


def blob(i, n=200_000):
    return bytes([i % 256]) * n


def shout(n):
    raise Boom("x" * n)


class Log:
    def __init__(self):
        self.seen = []

    def push(self, x):
        self.seen.append(x)
        return len(self.seen)

    def items(self):
        return list(self.seen)
"""


@pytest.fixture
def lib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flame_env: ClusterThread
) -> Iterator[ModuleType]:
    name = f"batchlib_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "project"
    root.mkdir()
    (root / f"{name}.py").write_text(USERLIB)
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def _app() -> str:
    return f"rb-{uuid.uuid4().hex[:8]}"


def test_a_burst_rides_in_few_tasks_and_keeps_every_result(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        inc = rr.service(lib.inc)
        assert inc(0).get(WAIT) == 1  # learns that flmrun runs batches
        batcher = inc._core.batcher
        assert batcher.batching is True
        before = batcher.tasks_sent
        futures = [inc(i) for i in range(3000)]
        assert rr.get(futures, WAIT) == [i + 1 for i in range(3000)]
        tasks = batcher.tasks_sent - before
        assert 3000 / MAX_BATCH_CALLS <= tasks <= 300, tasks


def test_a_lone_call_is_not_held_back(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        inc = rr.service(lib.inc)
        batcher = inc._core.batcher
        for i in range(20):
            assert inc(i).get(WAIT) == i + 1
        assert batcher.tasks_sent == 20


def test_a_chain_made_at_once_resolves_on_the_executor(lib: ModuleType, tmp_path: Path) -> None:
    with Runner(_app()) as rr:
        inc = rr.service(lib.inc)
        gate = rr.service(lib.wait_for)
        inc(0).get(WAIT)
        batcher = inc._core.batcher
        before = batcher.tasks_sent
        release = tmp_path / "release"
        handle = inc(gate(str(release)))  # another service's future: held on the client
        for _ in range(999):
            handle = inc(handle)
        release.touch()  # the whole chain exists before its head can leave
        assert handle.get(WAIT) == 1000
        # Whole batches of executor-resolved links: far fewer than 1000 tasks.
        assert batcher.tasks_sent - before <= 1000 // MAX_BATCH_CALLS + 2


def test_each_call_of_a_batch_fails_on_its_own(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        check = rr.service(lib.check)
        check(0).get(WAIT)
        futures = [check(i) for i in range(200)]
        dependent = [check(f) for f in futures[:20]]
        for i, future in enumerate(futures):
            if i % 7 == 3:
                with pytest.raises(lib.Boom, match=f"bad {i}"):
                    future.get(WAIT)
            else:
                assert future.get(WAIT) == i
        for i, future in enumerate(dependent):
            if i % 7 == 3:  # its argument failed: it fails with that error
                with pytest.raises(lib.Boom, match=f"bad {i}"):
                    future.get(WAIT)
            else:
                assert future.get(WAIT) == i
        assert check._core.batcher.tasks_sent < 150


def test_a_stateful_service_keeps_call_order_across_batches(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        log = rr.service(lib.Log())
        log.push(-1).get(WAIT)
        futures = [log.push(i) for i in range(2000)]
        assert rr.get(futures, WAIT) == list(range(2, 2002))
        assert log.items().get(WAIT) == [-1, *range(2000)]
        assert log._core.batcher.tasks_sent < 1000


def test_a_burst_still_spreads_over_instances(lib: ModuleType, tmp_path: Path) -> None:
    with Runner(_app()) as rr:
        nap_pid = rr.service(lib.nap_or_meet, warmup=2)
        nap_pid(0).get(WAIT)  # learns that flmrun runs batches
        # Two calls made at once go in two tasks; once both return, both instances
        # are up and idle.
        hall = tmp_path / "hall"
        hall.mkdir()
        met = rr.get([nap_pid(0, str(hall)) for _ in range(2)], WAIT)
        assert len(set(met)) == 2
        pids = rr.get([nap_pid(0.02) for _ in range(200)], WAIT)
        assert set(pids) == set(met)


def test_cancelling_a_waiting_call_fails_its_dependents(lib: ModuleType) -> None:
    async def scenario() -> None:
        async with AsyncRunner(_app()) as rr:
            nap = rr.service(lib.nap)
            inc = rr.service(lib.inc)
            slow = nap(1.0)
            waiting = inc(slow)  # another service's future: waits on the client
            dependent = inc(waiting)
            await asyncio.sleep(0.2)
            assert waiting.cancel()
            with pytest.raises(TaskCancelledError):
                await dependent.get(WAIT)
            assert await slow.get(WAIT) == 1.0
            assert await inc(41).get(WAIT) == 42

    asyncio.run(scenario())


def _stored_log(log: object) -> list[int]:
    """The ``seen`` list of the Log object as stored in the cache (the session's context)."""
    session = log._core._session.result()  # type: ignore[attr-defined]
    data = get_object(ObjectRef.decode(session.common_data()))
    return list(cloudpickle.loads(data).execution_object.seen)


def test_state_checkpoints_reach_the_cache_after_the_replies(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        log = rr.service(lib.Log())
        assert rr.get([log.push(i) for i in range(300)], WAIT)[-1] == 300
        deadline = time.monotonic() + 30
        while _stored_log(log) != list(range(300)):
            assert time.monotonic() < deadline, _stored_log(log)[-5:]
            time.sleep(0.05)
        log.push(300).get(WAIT)
        log.close()  # session leave flushes the newest snapshot
        deadline = time.monotonic() + 30
        while _stored_log(log) != list(range(301)):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_sequential_calls_share_state_writes(lib: ModuleType) -> None:
    from flamepy._cache.client import client_for
    from flmrun._runpy import CHECKPOINT_INTERVAL

    with Runner(_app()) as rr:
        log = rr.service(lib.Log())
        log.push(-1).get(WAIT)
        ref = ObjectRef.decode(log._core._session.result().common_data())  # type: ignore[attr-defined]
        start = time.monotonic()
        for i in range(100):
            assert log.push(i).get(WAIT) == i + 2
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + 30
        while _stored_log(log) != [-1, *range(100)]:  # the newest state still arrives
            assert time.monotonic() < deadline
            time.sleep(0.05)
        writes = client_for(ref.endpoint).get_entry(ref.key).version - ref.version
        # At most one write per interval (plus the one in flight), not one per call.
        assert writes <= elapsed / CHECKPOINT_INTERVAL + 3, (writes, elapsed)
        assert writes < 100 or elapsed > 100 * CHECKPOINT_INTERVAL


def test_a_state_that_cannot_be_saved_fails_the_next_call(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        holder = rr.service(lib.Holder())
        assert holder.ping().get(WAIT) == 2
        assert holder.lock_up().get(WAIT) == 1
        deadline = time.monotonic() + 30
        with pytest.raises(RuntimeError, match="could not be saved"):  # noqa: PT012
            while time.monotonic() < deadline:  # once the snapshot was tried
                holder.ping().get(WAIT)
                time.sleep(0.1)
        # A savable state again (the call may still report the last failure).
        failure = holder.take(0).exception(WAIT)
        assert failure is None or "could not be saved" in str(failure)
        deadline = time.monotonic() + 30
        while True:  # the snapshot of the new state succeeds, so calls pass again
            try:
                assert holder.ping().get(WAIT) == 2
                break
            except RuntimeError:
                assert time.monotonic() < deadline


# -- the sync API's futures: posted calls, shared waiters ---------------------------------


def test_a_sync_call_waiting_for_its_arguments_can_be_cancelled(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        nap = rr.service(lib.nap)
        inc = rr.service(lib.inc)
        slow = nap(1.0)
        waiting = inc(slow)  # another service's future: admitted by a task, later
        dependent = inc(waiting)
        assert waiting.cancel()
        assert waiting.done()
        with pytest.raises(TaskCancelledError):
            waiting.get(WAIT)
        with pytest.raises(TaskCancelledError):
            dependent.get(WAIT)
        assert slow.get(WAIT) == 1.0
        assert not slow.cancel()  # done: nothing to cancel
        queued = inc(1)
        queued.wait(WAIT)
        assert not queued.cancel()
        assert inc(41).get(WAIT) == 42


def test_runner_get_raises_the_first_failure_without_waiting_for_the_rest(
    lib: ModuleType,
) -> None:
    with Runner(_app()) as rr:
        nap = rr.service(lib.nap)
        check = rr.service(lib.check)
        check(0).get(WAIT)
        long = nap(6.0)
        with pytest.raises(lib.Boom, match="bad 3"):
            rr.get([long, check(1), check(3), check(11)], timeout=4.0)  # < the nap
        assert not long.done()
        assert long.cancel() is False  # already sent


def test_runner_get_and_wait_time_out_as_a_whole_and_can_wait_again(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        nap = rr.service(lib.nap)
        futures = [nap(1.5), nap(1.5)]
        with pytest.raises(FlameTimeoutError):
            rr.get(futures, timeout=0.2)
        with pytest.raises(FlameTimeoutError):
            rr.wait(futures, timeout=0.1)
        with pytest.raises(FlameTimeoutError):
            futures[0].exception(timeout=0.1)
        assert all(f._call.waiters in (None, []) for f in futures)  # waiters removed
        assert rr.get(futures, WAIT) == [1.5, 1.5]
        assert futures[0].exception(0) is None


def test_select_yields_in_completion_order_and_times_out(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        nap, other = rr.service(lib.nap), rr.service(lib.nap)  # two tasks, two instances
        rr.get([nap(0), other(0)], WAIT)
        done_first = nap(0.0)
        done_first.wait(WAIT)
        slow, fast = other(1.0), nap(0.0)
        order = list(rr.select([slow, fast, done_first], WAIT))
        assert order[0] is done_first  # finished before select started
        assert order[-1] is slow and set(order) == {slow, fast, done_first}
        stuck = nap(5.0)
        with pytest.raises(FlameTimeoutError):
            list(rr.select([stuck], timeout=0.2))
        assert stuck._call.waiters in (None, [])


def test_a_sync_future_can_be_awaited_on_any_event_loop(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        nap = rr.service(lib.nap)
        inc = rr.service(lib.inc)
        pending = nap(0.3)

        async def on_my_loop() -> list[float]:
            return [await pending, await inc(1), await asyncio.wait_for(nap(0.0), WAIT)]

        assert asyncio.run(on_my_loop()) == [0.3, 2, 0.0]

        async def give_up() -> None:
            await asyncio.wait_for(nap(5.0), 0.1)

        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(give_up())


def test_a_stateful_service_keeps_order_when_a_call_must_wait(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        log = rr.service(lib.Log())
        nap = rr.service(lib.nap)
        log.push(-1).get(WAIT)
        big = b"x" * (2 * 1024 * 1024)  # staged through the cache before it can go
        # Waits for another service, goes at once, waits for staging, goes at once.
        futures = [log.push(0), log.push(nap(0.5)), log.push(2), log.push(big), log.push(4)]
        assert rr.get(futures, WAIT) == [2, 3, 4, 5, 6]
        assert log.items().get(WAIT) == [-1, 0, 0.5, 2, big, 4]


def test_a_batch_of_large_results_stays_under_the_4_mib_output_limit(lib: ModuleType) -> None:
    """64 results of 200 KB, each small enough to come back inline, ride in batches
    far over 4 MiB: flmrun sends the largest through the cache instead (T2)."""
    with Runner(_app()) as rr:
        blob = rr.service(lib.blob)
        assert blob(0, 10).get(WAIT) == b"\x00" * 10  # learns that flmrun runs batches
        before = blob._core.batcher.tasks_sent
        values = rr.get([blob(i) for i in range(64)], timeout=WAIT)
        assert values == [bytes([i]) * 200_000 for i in range(64)]
        assert blob._core.batcher.tasks_sent - before < 20  # they did ride in batches


def test_a_huge_exception_message_is_cut_not_lost(lib: ModuleType) -> None:
    with Runner(_app()) as rr:
        shout = rr.service(lib.shout)
        with pytest.raises(RemoteError) as info:
            shout(6_000_000).get(WAIT)  # its pickle alone is over 4 MiB
        assert info.value.type_name.endswith(".Boom")
        assert "(cut)" in str(info.value)
        failed = [shout(3_000_000) for _ in range(3)]  # a batch of large errors
        for future in failed:
            with pytest.raises((lib.Boom, RemoteError)):
                future.get(WAIT)
