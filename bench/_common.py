"""The harness shared by the per-system benchmark processes (and their catalog).

A system process (``_flame.py``, ``_ray.py``, ``_dask.py``) runs one metric group
against one :class:`Adapter` and prints one ``@@BENCH {json}`` line per result as
soon as it has it, so that a process killed on timeout still reports what it
finished.  Every measurement goes through the same adapter methods, so the three
systems are measured the same way.  Imports here are light on purpose: the
cold-start clock of a system process starts before this module is imported.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import _workloads

MARK = "@@BENCH "
GROUPS = ("cold", "calls", "actor", "data", "scale")
SYSTEMS = ("flame", "flame-remote", "ray", "dask")
OURS = ("flame", "flame-remote")
"""``flame``: the embedded cluster, in the client's process; ``flame-remote``: a
``flame-local up`` in its own process, over gRPC and Flight only, as a real cluster."""
PEERS = ("ray", "dask")
MAX_ERROR_TEXT = 400
"""Characters of a failure message kept in the report."""
BIG_SCALE_REPEATS = 3
"""Repeats at the largest scale: a round takes minutes for the peers."""
SLOWEST_CALL = 0.02
"""Seconds per call added to the timeout of a gather (and of a chain)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each metric does, and how often it is repeated."""

    seq: int
    batch: int
    actor: int
    data_mb: int
    chain: int
    scale: tuple[int, ...]
    repeats: int
    timeout: float
    """Seconds any single get/gather may wait."""
    warmup_min: float
    warmup_max: float
    """Warm-up: at least ``warmup_min`` s, then until two rounds agree; ``warmup_max`` s at most."""


QUICK = Sizes(
    seq=100,
    batch=200,
    actor=200,
    data_mb=5,
    chain=100,
    scale=(1000, 2000, 5000),
    repeats=1,
    timeout=60.0,
    warmup_min=0.5,
    warmup_max=8.0,
)
FULL = Sizes(
    seq=1000,
    batch=10_000,
    actor=10_000,
    data_mb=100,
    chain=1000,
    scale=(1000, 10_000, 100_000),
    repeats=5,
    timeout=900.0,
    warmup_min=2.0,
    warmup_max=30.0,
)


def sizes_for(
    quick: bool, repeats: int | None = None, scale: tuple[int, ...] | None = None
) -> Sizes:
    """The sizes of a mode, with the repeat count or the g levels overridden."""
    base = QUICK if quick else FULL
    changes: dict[str, Any] = {}
    if repeats is not None:
        changes["repeats"] = repeats
    if scale:
        changes["scale"] = tuple(sorted(scale))
    return Sizes(**{**base.__dict__, **changes}) if changes else base


def parse_scale(text: str) -> tuple[int, ...]:
    """``1000,10k,100k`` -> (1000, 10000, 100000)."""
    return tuple(int(float(p[:-1]) * 1000) if p.endswith("k") else int(p) for p in text.split(","))


@dataclass(frozen=True)
class Metric:
    """One reported figure: what it is, its unit and which direction is better."""

    id: str
    label: str
    unit: str
    better: str  # "lower" or "higher"
    group: str
    info: bool = False
    """Context only: shown, but not required by --quick and not a target."""
    systems: tuple[str, ...] | None = None
    """The systems that report it (None: all)."""


def short(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def catalog(sizes: Sizes) -> list[Metric]:
    """Every metric, in table order, for these sizes."""
    mb = sizes.data_mb
    metrics = [
        Metric("a_cold_s", "a cold start: import -> 1st result", "s", "lower", "cold"),
        Metric("a_popen_s", "a cold start: Popen -> 1st result", "s", "lower", "cold", True),
        Metric("a_exit_s", "a 1st result -> process exit", "s", "lower", "cold", True),
        Metric("b_seq_us", f"b sequential no-op round trip (x{sizes.seq})", "us", "lower", "calls"),
        Metric(
            "floor_task_us",
            f"floor: bare grpcio CreateTask+WatchTask (x{sizes.seq})",
            "us",
            "lower",
            "calls",
            systems=("flame-remote",),
        ),
        Metric(
            "floor_echo_us",
            f"floor: bare grpcio echo server+client (x{sizes.seq})",
            "us",
            "lower",
            "calls",
            systems=("flame-remote",),
        ),
        Metric(
            "c_batch_cps", f"c {sizes.batch} no-op calls, then gather", "calls/s", "higher", "calls"
        ),
        Metric(
            "d_actor_cps",
            f"d stateful: {sizes.actor} calls, then gather",
            "calls/s",
            "higher",
            "actor",
        ),
        Metric(
            "d_actor_seq_us", f"d stateful: sequential call (x{sizes.seq})", "us", "lower", "actor"
        ),
        Metric("e_bytes_arg_MBps", f"e {mb} MB bytes as argument", "MB/s", "higher", "data"),
        Metric("e_numpy_arg_MBps", f"e {mb} MB numpy as argument", "MB/s", "higher", "data"),
        Metric("e_bytes_ret_MBps", f"e {mb} MB bytes as return value", "MB/s", "higher", "data"),
        Metric("e_numpy_ret_MBps", f"e {mb} MB numpy as return value", "MB/s", "higher", "data"),
        Metric(
            "f_chain_us", f"f chain of {sizes.chain} dependent calls", "us/hop", "lower", "calls"
        ),
    ]
    for n in sizes.scale:
        metrics.append(
            Metric(
                f"g_cps@{n}", f"g {short(n)} in flight: throughput", "calls/s", "higher", "scale"
            )
        )
    for n in sizes.scale:
        metrics.append(
            Metric(
                f"g_rss_mb@{n}", f"g {short(n)} in flight: client peak RSS", "MB", "lower", "scale"
            )
        )
    big = sizes.scale[-1]
    metrics.append(
        Metric(
            f"g_kb_per_call@{big}",
            f"g {short(big)}: client RSS growth per call",
            "KB",
            "lower",
            "scale",
        )
    )
    for n in sizes.scale:
        metrics.append(
            Metric(
                f"g_threads@{n}",
                f"g {short(n)} in flight: client OS threads",
                "threads",
                "lower",
                "scale",
            )
        )
    metrics.append(
        Metric(
            f"g_tree_rss_mb@{big}",
            f"g {short(big)}: RSS of all processes",
            "MB",
            "lower",
            "scale",
            True,
        )
    )
    return metrics


class Adapter(Protocol):
    """What a system offers the harness; a handle is the system's own future."""

    phases: dict[str, float]
    """Seconds spent in start-up phases (library import, cluster start, ...)."""

    def function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A submitter: calling it starts a remote call of ``fn`` and returns a handle."""
        ...

    def actor(self, cls: type, method: str) -> Callable[..., Any]:
        """Create one remote instance of ``cls``; a submitter for its ``method``."""
        ...

    def get(self, handle: Any, timeout: float) -> Any: ...

    def gather(self, handles: list[Any], timeout: float) -> list[Any]: ...

    def close(self) -> None: ...


def emit(metric: str, values: list[float] | None = None, **extra: Any) -> None:
    """Report one result line (or an error) to the orchestrator."""
    record: dict[str, Any] = {"metric": metric, **extra}
    if values is not None:
        record["values"] = values
    sys.stdout.write(MARK + json.dumps(record) + "\n")
    sys.stdout.flush()


@contextmanager
def reporting(*metrics: str) -> Iterator[None]:
    """Run a measurement; an exception is reported as the error of ``metrics``, not raised."""
    try:
        yield
    except Exception as exc:
        trace = traceback.format_exc()[-2000:]
        for metric in metrics:
            text = str(exc)
            if len(text) > MAX_ERROR_TEXT:  # Dask lists every cancelled future
                text = text[:MAX_ERROR_TEXT] + "..."
            emit(metric, error=f"{type(exc).__name__}: {text}", trace=trace)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def os_threads() -> int:
    """Threads of this process as the kernel counts them (C threads included)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


@dataclass(frozen=True)
class Proc:
    """One line of the process table."""

    pid: int
    ppid: int
    pgrp: int
    state: str
    start: int
    name: str

    @property
    def live(self) -> bool:
        return self.state not in ("Z", "X")


def process_table() -> dict[int, Proc]:
    """Every process, from /proc/<pid>/stat."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry)
        table[pid] = Proc(pid, int(fields[1]), int(fields[2]), fields[0], int(fields[19]), name)
    return table


def tree_rss_bytes(root: int) -> int:
    """RSS summed over ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for proc in process_table().values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += rss_bytes(pid)
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return total


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


class Harness:
    """Runs the metric groups on one adapter."""

    def __init__(self, adapter: Adapter, sizes: Sizes) -> None:
        self.a = adapter
        self.s = sizes

    def repeat(self, fn: Callable[[], float], warm: bool = False) -> list[float]:
        """``fn`` once per repeat (after one untimed run when ``warm``)."""
        if warm:
            fn()
        return [fn() for _ in range(self.s.repeats)]

    def settle(self, group: str, submit: Callable[..., Any]) -> None:
        """Warm up with rounds of 10 sequential calls and a batch of 50, until two
        consecutive rounds take times within 20% (workers started, caches hot)."""
        a, s = self.a, self.s
        start = time.perf_counter()
        rounds: list[float] = []
        while True:
            begin = time.perf_counter()
            for i in range(10):
                a.get(submit(i), s.timeout)
            a.gather([submit(i) for i in range(50)], s.timeout)
            rounds.append(time.perf_counter() - begin)
            elapsed = time.perf_counter() - start
            steady = len(rounds) >= 2 and max(rounds[-2:]) <= 1.2 * min(rounds[-2:])
            if elapsed >= s.warmup_max or (elapsed >= s.warmup_min and steady):
                break
        emit(f"warmup_{group}", [elapsed], rounds=rounds, steady=steady)

    def calls(self) -> None:
        """b (sequential round trip), c (batch throughput), f (dependency chain)."""
        a, s = self.a, self.s
        call = a.function(_workloads.inc)
        self.settle("calls", call)

        def seq() -> float:
            start = time.perf_counter()
            for i in range(s.seq):
                a.get(call(i), s.timeout)
            return (time.perf_counter() - start) / s.seq * 1e6

        with reporting("b_seq_us"):
            emit("b_seq_us", self.repeat(seq))

        floors = getattr(a, "floors", None)
        if floors is not None:  # the protocol's own cost, on the same server
            for name, measure in floors(s.seq).items():
                with reporting(name):
                    emit(name, self.repeat(measure, warm=True))

        submit_s: list[float] = []

        def batch() -> float:
            start = time.perf_counter()
            handles = [call(i) for i in range(s.batch)]
            submit_s.append(time.perf_counter() - start)
            results = a.gather(handles, s.timeout + len(handles) * SLOWEST_CALL)
            elapsed = time.perf_counter() - start
            expect(sum(results) == s.batch * (s.batch + 1) // 2, "wrong batch results")
            return s.batch / elapsed

        with reporting("c_batch_cps"):
            emit("c_batch_cps", self.repeat(batch), submit_s=submit_s)

        def chain() -> float:
            start = time.perf_counter()
            handle = call(0)
            for _ in range(s.chain - 1):
                handle = call(handle)
            result = a.get(handle, s.timeout + s.chain * SLOWEST_CALL)
            elapsed = time.perf_counter() - start
            expect(result == s.chain, f"chain gave {result}, not {s.chain}")
            return elapsed / s.chain * 1e6

        with reporting("f_chain_us"):
            emit("f_chain_us", self.repeat(chain))

    def actor(self) -> None:
        """d: one stateful instance, sequential and batched calls."""
        a, s = self.a, self.s
        add = a.actor(_workloads.Counter, "add")
        self.settle("actor", lambda _: add(1))

        def seq() -> float:
            start = time.perf_counter()
            for _ in range(s.seq):
                a.get(add(1), s.timeout)
            return (time.perf_counter() - start) / s.seq * 1e6

        with reporting("d_actor_seq_us"):
            emit("d_actor_seq_us", self.repeat(seq))

        in_order: list[bool] = []

        def batch() -> float:
            start = time.perf_counter()
            handles = [add(1) for _ in range(s.actor)]
            results = a.gather(handles, s.timeout + len(handles) * SLOWEST_CALL)
            elapsed = time.perf_counter() - start
            first = min(results)
            expect(sorted(results) == list(range(first, first + s.actor)), "a call lost or doubled")
            in_order.append(results[0] == first and results == sorted(results))
            return s.actor / elapsed

        with reporting("d_actor_cps"):
            # Ray and Flame run one caller's calls in order; Dask actors need not.
            emit("d_actor_cps", self.repeat(batch), in_order=in_order)

    def data(self) -> None:
        """e: a payload as the argument, and as the return value (MB/s)."""
        a, s = self.a, self.s
        nbytes = s.data_mb * 1_000_000
        op = a.function(_workloads.data_op)
        self.settle("data", lambda i: op("bytes", 1024 + i))
        for kind in ("bytes", "numpy"):
            payload = _workloads.make_payload(kind, nbytes)
            last = int(memoryview(payload).cast("B")[-1])

            def as_arg(payload: Any = payload, last: int = last) -> float:
                start = time.perf_counter()
                result = a.get(op("touch", payload), s.timeout)
                elapsed = time.perf_counter() - start
                expect(tuple(result) == (nbytes, last), f"touch gave {result}")
                return nbytes / 1e6 / elapsed

            with reporting(f"e_{kind}_arg_MBps"):
                emit(f"e_{kind}_arg_MBps", self.repeat(as_arg, warm=True))
            del payload
            gc.collect()

            def as_ret(kind: str = kind) -> float:
                start = time.perf_counter()
                value = a.get(op(kind, nbytes), s.timeout)
                elapsed = time.perf_counter() - start
                expect(memoryview(value).nbytes == nbytes, "short return value")
                del value
                gc.collect()
                return nbytes / 1e6 / elapsed

            with reporting(f"e_{kind}_ret_MBps"):
                emit(f"e_{kind}_ret_MBps", self.repeat(as_ret, warm=True))

    def scale(self) -> None:
        """g: throughput, client memory and threads with 1k..100k calls in flight."""
        a, s = self.a, self.s
        call = a.function(_workloads.inc)
        self.settle("scale", call)
        gc.collect()
        baseline = rss_bytes()
        big = s.scale[-1]
        for n in s.scale:
            cps: list[float] = []
            peak_mb: list[float] = []
            threads: list[float] = []
            py_threads: list[float] = []
            kb: list[float] = []
            tree: list[float] = []
            ids = [f"g_{m}@{n}" for m in ("cps", "rss_mb", "threads", "kb_per_call", "tree_rss_mb")]
            repeats = min(s.repeats, BIG_SCALE_REPEATS) if n == big else s.repeats
            with reporting(*ids):
                for _ in range(repeats):
                    gc.collect()
                    start = time.perf_counter()
                    handles = [call(i) for i in range(n)]
                    submitted_rss, submitted_threads = rss_bytes(), os_threads()
                    py_threads.append(threading.active_count())
                    results = a.gather(handles, s.timeout + len(handles) * SLOWEST_CALL)
                    elapsed = time.perf_counter() - start
                    peak = max(submitted_rss, rss_bytes())
                    expect(len(results) == n and results[-1] == n, "wrong results")
                    cps.append(n / elapsed)
                    peak_mb.append(peak / 1e6)
                    threads.append(max(submitted_threads, os_threads()))
                    kb.append((peak - baseline) / n / 1e3)
                    if n == big:
                        tree.append(tree_rss_bytes(os.getpid()) / 1e6)
                    del handles, results
                emit(f"g_cps@{n}", cps)
                emit(f"g_rss_mb@{n}", peak_mb)
                emit(f"g_threads@{n}", threads, python_threads=py_threads)
                if n == big:
                    emit(f"g_kb_per_call@{n}", kb)
                    emit(f"g_tree_rss_mb@{n}", tree)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one system, one metric group")
    parser.add_argument("--group", choices=GROUPS, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--scale", type=parse_scale, default=None)
    return parser.parse_args()


def main(make: Callable[[], Adapter], t0: float) -> None:
    """Entry point of a system process; ``t0`` is perf_counter() before any import."""
    opts = parse_args()
    sizes = sizes_for(opts.quick, opts.repeats, opts.scale)
    start = time.perf_counter()
    adapter = make()
    started = time.perf_counter()
    try:
        if opts.group == "cold":
            with reporting("a_cold_s"):
                call = adapter.function(_workloads.inc)
                registered = time.perf_counter()
                result = adapter.get(call(1), sizes.timeout)
                first, first_wall = time.perf_counter(), time.time()
                expect(result == 2, f"first call gave {result}")
                phases = {
                    "before_make": start - t0,
                    **adapter.phases,
                    "make": started - start,
                    "register": registered - started,
                    "first_call": first - registered,
                }
                emit("a_cold_s", [first - t0], first_wall=first_wall, phases=phases)
        else:
            emit("startup", [started - start], phases=adapter.phases)
            harness = Harness(adapter, sizes)
            getattr(harness, opts.group)()
    finally:
        closing = time.perf_counter()
        adapter.close()
        if opts.group == "cold":
            emit("a_close_s", [time.perf_counter() - closing])
    emit("done")
