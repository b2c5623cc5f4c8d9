"""Peer scenario: Flame's own Runner (flamepy 0.6.0) runs the Runner snippet.

Usage: ``python runner_snippet.py NAME [--extras|--instances]``, with a project
directory holding only this file as cwd (the peer Runner packages its cwd) and
FLAME_ENDPOINT / FLAME_CACHE_ENDPOINT set.  The template is the peer's default,
``flmrun``, which our local cluster registers as ``<workspace python> -m flmrun``.
Self-contained on purpose: it is the only file in the package.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import cloudpickle

import flamepy
from flamepy.core.cache import ObjectRef, get_object
from flamepy.runner import Runner


def sum(a: int, b: int) -> int:  # the snippet's own name, shadowing the builtin
    return a + b


class Counter:
    def __init__(self, c: int = 0) -> None:
        self._count = c

    def add(self, a: int) -> None:
        self._count += a

    def get_counter(self) -> int:
        return self._count


class Sleeper:
    def pid_after(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    def meet(self, folder: str, n: int, timeout: float = 60.0) -> int:
        """Returns once ``n`` instances are in ``folder`` at the same time."""
        open(os.path.join(folder, str(os.getpid())), "w").close()
        deadline = time.monotonic() + timeout
        while len(os.listdir(folder)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {os.listdir(folder)} came")
            time.sleep(0.01)
        return os.getpid()


def fail(x: int) -> None:
    raise ValueError(f"boom {x}")


def add(a: int, b: int = 0) -> int:
    return a + b


def snippet(rr: Runner) -> list[Any]:
    out = [rr.service(sum)(1, 2).get()]
    c = rr.service(Counter)
    c.add(1)
    c.add(3)
    out.append(c.get_counter().get())
    o = rr.service(Counter(10))
    o.add(1)
    o.add(3)
    r = o.get_counter()
    out.append(r.get())
    o.add(r)
    out.append(o.get_counter().get())
    return out


def sessions_of(name: str) -> list[Any]:
    return sorted((s for s in flamepy.list_sessions() if s.application == name), key=lambda s: s.id)


def stored_context(common_data: bytes) -> dict[str, Any]:
    """The RunnerContext a session's common_data points at, as the cache holds it now."""
    ref = ObjectRef.decode(common_data)
    context = cloudpickle.loads(get_object(ref))
    return {
        "class": f"{type(context).__module__}.{type(context).__qualname__}",
        "stateful": context.stateful,
        "count": getattr(context.execution_object, "_count", None),
        "key_prefix": ref.key.rsplit("/", 1)[0],
    }


def extras(rr: Runner, name: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    try:
        rr.service(fail)(7).get()
        seen["failure"] = None
    except Exception as exc:
        seen["failure"] = {"type": type(exc).__name__, "message": str(exc)}
    failed = [
        s.get_task(t.id) for s in sessions_of(name) for t in s.list_tasks() if int(t.state) == 3
    ]
    seen["failed_tasks"] = [
        {
            "events": [{"code": e.code, "message": e.message} for e in task.events or []],
            "output_prefix": None if task.output is None else bytes(task.output[:4]).hex(),
        }
        for task in failed
    ]
    adder = rr.service(add)
    first = adder(40, 1)
    seen["keyword_future"] = adder(1, b=first).get()
    shared = rr.put_object(100)  # its version is a bson.int64.Int64 (from the PutResult)
    seen["shared_ref_version_type"] = type(shared.version).__name__
    try:
        seen["shared_ref"] = adder(shared, 1).get()
    except Exception as exc:
        seen["shared_ref"] = {"type": type(exc).__name__, "message": str(exc)}
    ref = first.ref()
    seen["result_ref"] = {"key": ref.key, "version": int(ref.version)}
    counter = rr.service(Counter(5))
    counter.add(2)
    seen["object_count"] = counter.get_counter().get()
    seen["stored_contexts"] = [stored_context(s.common_data()) for s in sessions_of(name)]
    return seen


def instances(rr: Runner) -> dict[str, Any]:
    service = rr.service(Sleeper)
    folder = tempfile.mkdtemp(prefix="meet-")
    try:  # each call waits for the other: both must run at once, in two instances
        futures = [service.meet(folder, 2), service.meet(folder, 2)]
        return {"pids": [f.get() for f in futures]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    name = sys.argv[1]
    result: dict[str, Any] = {
        "peer": {"version": importlib.metadata.version("flamepy"), "file": flamepy.__file__}
    }
    with Runner(name) as rr:
        if "--instances" in sys.argv[2:]:
            result.update(instances(rr))
        else:
            result["snippet"] = snippet(rr)
        if "--extras" in sys.argv[2:]:
            result["extras"] = extras(rr, name)
    print(json.dumps(result, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
