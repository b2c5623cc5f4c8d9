"""Case 6: session creation costs what changed, not every session there is.

A burst of concurrent CreateSession calls (2,000 in CI, 10,000 at full scale)
all succeed (before: bursts of 2,000 and 3,000 got 752 and 1,882 CANCELLED),
while a well-behaved client's calls keep being answered; its p99 latency during
the burst is printed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from _chaos import LocalUp, scale

import flamepy
from flamepy import AsyncConnection, SessionAttributes


async def _burst(endpoint: str, count: int) -> list[BaseException]:
    conn = await AsyncConnection.connect(endpoint)
    try:
        await conn.register_application("burst", flamepy.ApplicationAttributes(command="/bin/true"))
        results = await asyncio.gather(
            *(
                conn.create_session(SessionAttributes(application="burst", id=f"b-{i}"))
                for i in range(count)
            ),
            return_exceptions=True,
        )
        return [r for r in results if isinstance(r, BaseException)]
    finally:
        await conn.close()


async def _polite(endpoint: str, stop: asyncio.Event) -> list[float]:
    conn = await AsyncConnection.connect(endpoint)
    latencies = []
    try:
        while not stop.is_set():
            started = time.perf_counter()
            assert await conn.get_application("flmrun") is not None
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
    finally:
        await conn.close()
    return latencies


def test_case6_a_burst_of_sessions_is_created_in_full(local_up: LocalUp) -> None:
    count = scale(2_000, 10_000)
    endpoint = local_up.env["FLAME_ENDPOINT"]

    async def main() -> tuple[list[BaseException], list[float], float]:
        stop = asyncio.Event()
        polite = asyncio.ensure_future(_polite(endpoint, stop))
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        failures = await _burst(endpoint, count)
        took = time.perf_counter() - started
        stop.set()
        return failures, await polite, took

    saved = os.environ.get("FLAME_ENDPOINT")
    failures, latencies, took = asyncio.run(asyncio.wait_for(main(), 600))
    assert saved == os.environ.get("FLAME_ENDPOINT")
    assert failures == [], failures[:3]
    conn = flamepy.Connection.connect(endpoint)
    try:
        created = [s for s in conn.list_sessions() if s.application == "burst"]
    finally:
        conn.close()
    assert len(created) == count
    assert latencies, "the well-behaved client got no answer during the burst"
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]
    print(
        f"\n{count} concurrent CreateSession in {took:.1f}s; well-behaved client: "
        f"{len(latencies)} calls, p50 {statistics.median(latencies) * 1e3:.1f} ms, "
        f"p99 {p99 * 1e3:.1f} ms"
    )
