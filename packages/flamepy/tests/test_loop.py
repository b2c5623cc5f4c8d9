"""flamepy's one background loop: posted callbacks from many threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from flamepy._loop import POST_SLICE, BackgroundLoop


@pytest.fixture
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.stop()
    loop.loop.close()


def test_posted_callbacks_run_on_the_loop_in_order_per_thread(bg: BackgroundLoop) -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}
    threads: set[str] = set()
    done = threading.Event()
    n = 3 * POST_SLICE  # more than one slice per loop pass

    def record(item: tuple[str, int]) -> None:
        threads.add(threading.current_thread().name)
        seen[item[0]].append(item[1])
        if len(seen["a"]) == n and len(seen["b"]) == n:
            done.set()

    def producer(name: str) -> None:
        for i in range(n):
            bg.post(record, (name, i))

    workers = [threading.Thread(target=producer, args=(k,)) for k in seen]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert done.wait(30)
    assert seen == {"a": list(range(n)), "b": list(range(n))}
    assert threads == {"flamepy-loop"}


def test_a_failing_callback_is_logged_and_the_rest_still_run(
    bg: BackgroundLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ran = threading.Event()

    def boom(_: object) -> None:
        raise ValueError("posted boom")

    with caplog.at_level(logging.ERROR, logger="flamepy.loop"):
        bg.post(boom, None)
        bg.post(lambda _: ran.set(), None)
        assert ran.wait(10)
    assert "posted boom" in caplog.text


def test_run_posted_drains_what_was_posted_before_a_coroutine(bg: BackgroundLoop) -> None:
    seen: list[int] = []
    hold = threading.Event()
    bg.post(lambda _: hold.wait(10), None)  # keeps the loop busy while we post more
    for i in range(10):
        bg.post(seen.append, i)

    async def drained() -> list[int]:
        bg.run_posted()
        return list(seen)

    hold.set()
    assert bg.run(drained(), timeout=10) == list(range(10))
