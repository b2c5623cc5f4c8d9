"""The remote code every system runs: identical functions and one stateful class.

Each benchmark process registers this module for pickling by value, so no worker
(Flame instance, Ray worker, Dask worker) needs to import it.  Nothing heavy is
imported at module level: the cold-start clock starts before this module loads.
"""

from __future__ import annotations

from typing import Any


def inc(x: int) -> int:
    """The no-op call: one integer in, one out (also the hop of the chain)."""
    return x + 1


def random_words(nbytes: int, seed: int = 0) -> Any:
    """``nbytes`` of incompressible random data as a uint64 array (PCG64 raw bits)."""
    import numpy as np

    return np.random.default_rng(seed).bit_generator.random_raw(nbytes // 8)


def make_payload(kind: str, nbytes: int, seed: int = 0) -> Any:
    """A ``bytes`` or float64 ``numpy`` payload of ``nbytes`` random bytes."""
    import numpy as np

    words = random_words(nbytes, seed)
    return words.tobytes() if kind == "bytes" else words.view(np.float64)


def data_op(op: str, arg: Any) -> Any:
    """``touch``: receive a payload, read its size and last byte, return both;
    ``bytes`` / ``numpy``: create a payload of ``arg`` bytes and return it."""
    if op == "touch":
        view = memoryview(arg).cast("B")
        return (view.nbytes, int(view[-1]))
    return make_payload(op, int(arg), seed=1)


class Counter:
    """The stateful service: a counter whose state lives on one worker."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int = 1) -> int:
        self.count += n
        return self.count
