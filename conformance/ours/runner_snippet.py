"""Our Runner (workspace flamepy) runs the Runner snippet on a given template.

Usage: ``python runner_snippet.py NAME TEMPLATE [--extras]``, run with the project
directory (a copy of this file alone) as cwd and FLAME_ENDPOINT /
FLAME_CACHE_ENDPOINT set.  Prints one JSON document: the snippet's four results
and, with ``--extras``, what other wire paths gave (failures, large and nested
arguments, keyword futures, shared objects).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from flamepy.runner import Runner

WAIT = 90.0
"""Seconds any one result may take (instance start included)."""
LARGE = 2 * 1024 * 1024
"""Bigger than the Runner's 1 MiB limit for inline arguments: travels as an ObjectRef."""


def sum(a: int, b: int) -> int:  # the snippet's own name, shadowing the builtin
    return a + b


class Counter:
    def __init__(self, c: int = 0) -> None:
        self._count = c

    def add(self, a: int) -> None:
        self._count += a

    def get_counter(self) -> int:
        return self._count


def fail(x: int) -> None:
    raise ValueError(f"boom {x}")


def size(data: Any) -> list[Any]:
    return [type(data).__name__, len(data)]


def total(array: Any) -> float:
    return float(array.sum())


def kinds(items: list[Any]) -> list[str]:
    return [type(item).__module__ + "." + type(item).__name__ for item in items]


def add(a: int, b: int = 0) -> int:
    return a + b


def snippet(rr: Runner) -> list[Any]:
    out = [rr.service(sum)(1, 2).get(WAIT)]
    c = rr.service(Counter)
    c.add(1)
    c.add(3)
    out.append(c.get_counter().get(WAIT))
    o = rr.service(Counter(10))
    o.add(1)
    o.add(3)
    r = o.get_counter()
    out.append(r.get(WAIT))
    o.add(r)
    out.append(o.get_counter().get(WAIT))
    return out


def extras(rr: Runner) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    try:
        rr.service(fail)(7).get(WAIT)
        seen["failure"] = None
    except Exception as exc:
        seen["failure"] = {
            "type": type(exc).__module__ + "." + type(exc).__name__,
            "message": str(exc),
            "is_value_error": isinstance(exc, ValueError),
        }
    seen["large_bytes"] = rr.service(size)(b"x" * LARGE).get(WAIT)
    seen["large_array"] = rr.service(total)(np.ones(LARGE // 8 + 1)).get(WAIT)
    adder = rr.service(add)
    first = adder(40, 1)
    seen["keyword_future"] = adder(1, b=first).get(WAIT)
    seen["nested_future"] = rr.service(kinds)([first, 5]).get(WAIT)
    shared = rr.put_object(100)
    seen["shared_ref"] = adder(shared, 1).get(WAIT)
    ref = first.ref(WAIT)
    seen["result_ref"] = {"key": ref.key, "version": int(ref.version)}
    # A burst and a chain made at once: our Runner offers batches, the peer runs
    # only the first call of a task, so the Runner must fall back to one per task.
    burst = [adder(i, 1) for i in range(60)]
    chain = adder(0, 1)
    for _ in range(20):
        chain = adder(chain, 1)
    seen["burst"] = rr.get(burst, WAIT) == [i + 1 for i in range(60)]
    seen["chain"] = chain.get(WAIT)
    batcher = adder._core.batcher  # type: ignore[attr-defined]
    seen["batching"] = batcher.batching
    return seen


def main() -> None:
    name, template = sys.argv[1], sys.argv[2]
    result: dict[str, Any] = {}
    with Runner(name, template=template) as rr:
        result["snippet"] = snippet(rr)
        if "--extras" in sys.argv[3:]:
            result["extras"] = extras(rr)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
