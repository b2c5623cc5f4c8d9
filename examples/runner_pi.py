"""Estimate pi with many remote Monte Carlo samples, gathered in completion order.

uv run python examples/runner_pi.py [samples-per-task] [tasks]
"""

import random
import sys
import time

from flamepy import Runner


def hits(samples: int, seed: int) -> int:
    rng = random.Random(seed)
    return sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


if __name__ == "__main__":
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    start = time.perf_counter()
    with Runner("pi") as rr:
        sampler = rr.service(hits)
        futures = [sampler(samples, seed) for seed in range(tasks)]
        total = 0
        for done, future in enumerate(rr.select(futures), 1):
            total += future.get()
            print(f"{done}/{tasks} tasks done, pi ~ {4 * total / (done * samples):.5f}")
    print(f"pi ~ {4 * total / (tasks * samples):.6f} in {time.perf_counter() - start:.2f}s")
