"""Object cache throughput: put and get of 100 MB payloads beside a memory copy.

Run: ``uv run python bench/cache_bench.py [--size-mb 100] [--repeat 5]``.  Starts
a local cache server (loopback), measures, prints a table and writes JSON under
bench/results/.  Not a test: numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flame_testkit._cache_server import CacheServer
from flamepy._cache import client as _cache_client

RESULTS = Path(__file__).parent / "results"


def _time(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    size = opts.size_mb * 1_000_000
    payloads: dict[str, Any] = {
        "bytes": np.random.default_rng(0).bytes(size),
        "numpy": np.random.default_rng(0).random(size // 8),
    }
    rows = []
    with CacheServer(port=0) as server:
        for kind, value in payloads.items():
            src = np.frombuffer(value, np.uint8) if isinstance(value, bytes) else value
            copy_times = _time(lambda src=src: src.copy(), opts.repeat)
            client = _cache_client.CacheClient(server.endpoint)
            refs: list[tuple[str, str, int]] = []
            put_times = _time(
                lambda v=value, c=client, r=refs: r.append(c.put("bench/s", v)), opts.repeat
            )
            key = refs[-1][1]

            def get(key: str = key) -> Any:
                fresh = _cache_client.CacheClient(server.endpoint)  # no local copy
                try:
                    return fresh.get(key)
                finally:
                    fresh.close()

            get_times = _time(get, opts.repeat)
            client.close()
            for op, times in (("memcpy", copy_times), ("put", put_times), ("get", get_times)):
                mbps = [size / t / 1e6 for t in times]
                rows.append(
                    {
                        "payload": kind,
                        "op": op,
                        "median_MBps": statistics.median(mbps),
                        "max_MBps": max(mbps),
                        "median_s": statistics.median(times),
                    }
                )
    print(f"object cache, {opts.size_mb} MB payloads, {opts.repeat} runs, loopback")
    print(f"{'payload':8} {'op':7} {'median MB/s':>12} {'best MB/s':>10} {'vs memcpy':>10}")
    copies = {r["payload"]: r["median_MBps"] for r in rows if r["op"] == "memcpy"}
    for r in rows:
        ratio = r["median_MBps"] / copies[r["payload"]]
        print(
            f"{r['payload']:8} {r['op']:7} {r['median_MBps']:12.0f} {r['max_MBps']:10.0f} "
            f"{ratio:10.3f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cache-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"machine": platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
