"""Runner (Flame) vs Ray vs Dask: one suite, same machine, same run.

Run: ``uv run nox -s bench`` (full) or ``uv run nox -s bench-quick``; directly,
``python bench/run.py [--quick] [--repeats N] [--systems flame,ray] [--groups calls]``
in an environment that has ray and distributed.

Each system runs each metric group in a fresh process (``bench/_<system>.py``)
with its own temporary HOME and working directory, one process at a time; a
process that overruns its timeout is killed with its process group and its
missing metrics say why.  Cold starts are fresh processes, one per repeat, taken
round-robin over the systems.  Prints one table (medians, ratio to the best
peer, targets) and writes everything to ``bench/results/bench-<timestamp>.json``.
Exits non-zero when any metric has no number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    GROUPS,
    MARK,
    OURS,
    PEERS,
    SYSTEMS,
    Metric,
    Proc,
    Sizes,
    catalog,
    parse_scale,
    process_table,
    short,
    sizes_for,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
QUICK_TIMEOUTS = {"cold": 90.0, "calls": 120.0, "actor": 120.0, "data": 120.0, "scale": 150.0}
FULL_TIMEOUTS = {"cold": 180.0, "calls": 1800.0, "actor": 1800.0, "data": 1200.0, "scale": 5400.0}
SCRUBBED_ENV = ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT", "FLAME_CONFIG", "RAY_ADDRESS")
WATCH_INTERVAL = 1.0
"""Seconds between looks at a running system process's descendants."""
PROJECT_MODULE = (
    '"""A tiny project for the Runner to package; the benchmark code is sent by value."""\n'
)


@dataclass
class Run:
    """One system process: what it reported and how it ended."""

    system: str
    group: str
    repeat: int
    elapsed_s: float = 0.0
    returncode: int | None = None
    error: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    stderr_tail: str = ""
    leftovers_killed: list[str] = field(default_factory=list)


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(
        HOME=str(home),
        PYTHONUNBUFFERED="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def descendants(root: int) -> dict[int, Proc]:
    """The live descendants of ``root`` (not ``root`` itself)."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: dict[int, Proc] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if table[pid].live:
            found[pid] = table[pid]
        todo.extend(children.get(pid, []))
    return found


def kill_leftovers(pgid: int, seen: dict[int, Proc]) -> list[str]:
    """SIGKILL what is left of a system process: its process group, and every
    descendant seen while it ran (some, like Flame's instances, start their own
    session and are orphaned when their parent dies).  Returns what was killed."""
    table = process_table()
    left = [p for p in table.values() if p.live and p.pgrp == pgid]
    left += [
        table[pid]
        for pid, proc in seen.items()
        if pid in table
        and table[pid].live
        and table[pid].start == proc.start
        and table[pid].pgrp != pgid
    ]
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    return [f"{p.pid} {p.name}" for p in left]


def run_system(system: str, group: str, repeat: int, opts: argparse.Namespace) -> Run:
    """Run one system process in a fresh HOME and project directory, with a timeout."""
    timeout = (QUICK_TIMEOUTS if opts.quick else FULL_TIMEOUTS)[group] * opts.timeout_scale
    run = Run(system, group, repeat)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{system}-"))
    home, project = scratch / "home", scratch / "project"
    home.mkdir()
    project.mkdir()
    (project / "bench_app.py").write_text(PROJECT_MODULE)
    cmd = [sys.executable, str(HERE / f"_{system.replace('-', '_')}.py"), "--group", group]
    if opts.quick:
        cmd.append("--quick")
    if opts.repeats is not None:
        cmd += ["--repeats", str(opts.repeats)]
    if opts.scale:
        cmd += ["--scale", ",".join(map(str, opts.scale))]
    stdout_path, stderr_path = scratch / "stdout.log", scratch / "stderr.log"
    print(f"  {group:5} {system:12} ...", end="", flush=True)
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        popen_wall = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=project,
            env=child_env(home),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        seen: dict[int, Proc] = {}
        while True:
            try:
                proc.wait(timeout=WATCH_INTERVAL)
                break
            except subprocess.TimeoutExpired:
                seen.update(descendants(proc.pid))
                if time.perf_counter() - start > timeout:
                    run.leftovers_killed = kill_leftovers(proc.pid, seen)
                    proc.wait()
                    run.error = f"timed out after {timeout:.0f}s; its processes were killed"
                    break
        run.elapsed_s = time.perf_counter() - start
        exit_wall = time.time()
    run.returncode = proc.returncode
    time.sleep(0.5)  # let a clean shutdown finish before looking for leftovers
    run.leftovers_killed += kill_leftovers(proc.pid, seen)
    for line in stdout_path.read_text(errors="replace").splitlines():
        if line.startswith(MARK):
            try:
                run.records.append(json.loads(line[len(MARK) :]))
            except json.JSONDecodeError:
                continue
    for record in run.records:
        if record.get("metric") == "a_cold_s" and "first_wall" in record and not run.error:
            first = record["first_wall"]
            run.records.append({"metric": "a_popen_s", "values": [first - popen_wall]})
            run.records.append({"metric": "a_exit_s", "values": [exit_wall - first]})
            break
    run.stderr_tail = stderr_path.read_text(errors="replace")[-3000:]
    if run.error is None and proc.returncode != 0:
        run.error = f"exited with {proc.returncode}: {last_line(run.stderr_tail)}"
    if run.error is None and not any(r.get("metric") == "done" for r in run.records):
        run.error = "ended without finishing"
    shutil.rmtree(scratch, ignore_errors=True)
    status = "ok" if run.error is None else f"FAILED ({run.error})"
    if run.leftovers_killed:
        status += f"; killed leftovers: {', '.join(run.leftovers_killed)}"
    print(f" {run.elapsed_s:6.1f}s {status}", flush=True)
    return run


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def summarize(values: list[float], better: str) -> dict[str, float]:
    best = min(values) if better == "lower" else max(values)
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "best": best,
    }


def collect(runs: list[Run], metrics: list[Metric], systems: list[str]) -> dict[str, Any]:
    """Per metric and system: all values, median/min/max, or the reason it is missing."""
    by_id = {m.id: m for m in metrics}
    table: dict[str, dict[str, Any]] = {m.id: {} for m in metrics}
    for run in runs:
        for record in run.records:
            metric = by_id.get(record.get("metric", ""))
            if metric is None:
                continue
            cell = table[metric.id].setdefault(run.system, {"values": [], "extra": []})
            if "error" in record:
                cell.setdefault("errors", []).append(record["error"])
            else:
                cell["values"].extend(record["values"])
            extra = {k: v for k, v in record.items() if k not in ("metric", "values")}
            if extra:
                cell["extra"].append(extra)
    for metric in metrics:
        for system in systems:
            if metric.systems is not None and system not in metric.systems:
                continue
            cell = table[metric.id].setdefault(system, {"values": [], "extra": []})
            if cell["values"]:
                cell.update(summarize(cell["values"], metric.better))
            else:
                reasons = cell.get("errors") or [
                    r.error or "not reported"
                    for r in runs
                    if r.system == system and r.group == metric.group
                ]
                cell["missing"] = "; ".join(dict.fromkeys(reasons)) or "not run"
    return table


def median_of(table: dict[str, Any], metric: str, system: str) -> float | None:
    cell = table.get(metric, {}).get(system, {})
    value = cell.get("median")
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Target:
    """A goal for our figures: ``check`` gets the table and returns (ok, detail)."""

    label: str
    group: str
    check: Callable[[dict[str, Any]], tuple[bool | None, str]]


def ratio_check(
    metric: str,
    peer: str,
    factor: float,
    better: str,
    system: str = "flame",
    peer_metric: str | None = None,
) -> Callable[[dict[str, Any]], tuple[bool | None, str]]:
    """ours <= factor x peer (lower is better) or ours >= factor x peer (higher);
    ``peer_metric`` compares with another metric of the peer (a floor)."""

    def check(table: dict[str, Any]) -> tuple[bool | None, str]:
        ours = median_of(table, metric, system)
        theirs = median_of(table, peer_metric or metric, peer)
        if ours is None or theirs is None or theirs == 0:
            return None, "missing"
        ratio = ours / theirs
        ok = ratio <= factor if better == "lower" else ratio >= factor
        return ok, f"{ratio:.2f}x {peer_metric or peer}"

    return check


def vs_ray(
    label: str, metric: str, factor: float, better: str, group: str, system: str = "flame"
) -> Target:
    op = "<=" if better == "lower" else ">="
    prefix = "" if system == "flame" else f"[{system}] "
    return Target(
        f"{prefix}{label} {op} {factor:g}x Ray",
        group,
        ratio_check(metric, "ray", factor, better, system),
    )


def remote_targets() -> list[Target]:
    """The real path: a separate flame-local up, over gRPC and Flight only."""
    r = "flame-remote"
    return [
        vs_ray("b sequential round trip", "b_seq_us", 0.8, "lower", "calls", r),
        Target(
            f"[{r}] b <= 1.1x its CreateTask+WatchTask floor",
            "calls",
            ratio_check("b_seq_us", r, 1.1, "lower", r, peer_metric="floor_task_us"),
        ),
        Target(
            f"[{r}] floor <= 2.6x the bare grpcio echo",
            "calls",
            ratio_check("floor_task_us", r, 2.6, "lower", r, peer_metric="floor_echo_us"),
        ),
        vs_ray("c batch throughput", "c_batch_cps", 10.0, "higher", "calls", r),
        vs_ray("d stateful throughput", "d_actor_cps", 5.0, "higher", "actor", r),
        vs_ray("e bytes as argument", "e_bytes_arg_MBps", 1.0, "higher", "data", r),
        vs_ray("e numpy as argument", "e_numpy_arg_MBps", 1.0, "higher", "data", r),
        vs_ray("e bytes as return value", "e_bytes_ret_MBps", 1.0, "higher", "data", r),
        vs_ray("e numpy as return value", "e_numpy_ret_MBps", 1.0, "higher", "data", r),
        vs_ray("f chain, per hop", "f_chain_us", 0.5, "lower", "calls", r),
    ]


def cold_target() -> Target:
    checks = [
        ratio_check("a_cold_s", "dask", 1.0, "lower"),
        ratio_check("a_cold_s", "ray", 0.3, "lower"),
    ]

    def check(table: dict[str, Any]) -> tuple[bool | None, str]:
        results = [c(table) for c in checks]
        if any(ok is None for ok, _ in results):
            return None, "missing"
        return all(ok for ok, _ in results), ", ".join(detail for _, detail in results)

    return Target("a cold start <= Dask and <= 0.3x Ray", "cold", check)


def scale_targets(sizes: Sizes) -> list[Target]:
    small, big = sizes.scale[0], sizes.scale[-1]

    def flat_cost(table: dict[str, Any]) -> tuple[bool | None, str]:
        a = median_of(table, f"g_cps@{small}", "flame")
        b = median_of(table, f"g_cps@{big}", "flame")
        if a is None or b is None or b == 0:
            return None, "missing"
        ratio = a / b  # per-call cost (1 / throughput) at big over that at small
        return ratio <= 1.5, f"{ratio:.2f}x"

    def flat_threads(table: dict[str, Any]) -> tuple[bool | None, str]:
        a = median_of(table, f"g_threads@{small}", "flame")
        b = median_of(table, f"g_threads@{big}", "flame")
        if a is None or b is None:
            return None, "missing"
        return b - a <= 8, f"{a:.0f} -> {b:.0f} threads"

    return [
        Target(f"g per-call cost @{short(big)} <= 1.5x @{short(small)}", "scale", flat_cost),
        Target(
            f"g no thread per call (+<=8 @{short(big)} vs @{short(small)})", "scale", flat_threads
        ),
    ]


def targets(sizes: Sizes) -> list[Target]:
    return [
        cold_target(),
        vs_ray("b sequential round trip", "b_seq_us", 0.5, "lower", "calls"),
        vs_ray("c batch throughput", "c_batch_cps", 2.0, "higher", "calls"),
        vs_ray("d stateful throughput", "d_actor_cps", 2.0, "higher", "actor"),
        vs_ray("d stateful sequential call", "d_actor_seq_us", 0.6, "lower", "actor"),
        vs_ray("e bytes as argument", "e_bytes_arg_MBps", 1.0, "higher", "data"),
        vs_ray("e numpy as argument", "e_numpy_arg_MBps", 1.0, "higher", "data"),
        vs_ray("e bytes as return value", "e_bytes_ret_MBps", 1.0, "higher", "data"),
        vs_ray("e numpy as return value", "e_numpy_ret_MBps", 1.0, "higher", "data"),
        vs_ray("f chain, per hop", "f_chain_us", 0.5, "lower", "calls"),
        *scale_targets(sizes),
        *remote_targets(),
    ]


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(table: dict[str, Any], metrics: list[Metric], systems: list[str], sizes: Sizes) -> str:
    """The printed report: one row per metric, then the targets."""
    groups = {m.group for m in metrics}
    peers = [p for p in PEERS if p in systems]
    head = f"{'metric':44} {'unit':8} {'better':6} " + " ".join(
        f"{s + ' med (min)':>21}" for s in systems
    )
    head += f" {'ours/best':>9}  best peer"
    lines = [head, "-" * len(head)]
    for metric in metrics:
        row = [
            (median_of(table, metric.id, s), table[metric.id].get(s, {}).get("min"))
            for s in systems
        ]
        ours = median_of(table, metric.id, "flame")
        peer_values = {p: median_of(table, metric.id, p) for p in peers}
        known = {p: v for p, v in peer_values.items() if v is not None}
        ratio, best = "", ""
        if ours is not None and known:
            pick = min if metric.better == "lower" else max
            best = pick(known, key=lambda p: known[p])
            if known[best]:
                ratio = f"{ours / known[best]:.2f}x"
        label = metric.label + (" (info)" if metric.info else "")
        cells = " ".join(
            f"{fmt(med) + (f' ({fmt(low)})' if low is not None else ''):>21}" for med, low in row
        )
        lines.append(f"{label:44} {metric.unit:8} {metric.better:6} {cells} {ratio:>9}  {best}")
    lines.append("")
    lines.append(
        "med (min) = median and minimum over the repeats; ratio = ours / best peer median: "
        "for 'lower' metrics < 1 is better, for 'higher' > 1."
    )
    lines.append("")
    lines.append(f"{'target (ours vs peer medians)':58} {'result':6}  detail")
    for target in targets(sizes):
        if target.group not in groups:
            continue
        ok, detail = target.check(table)
        status = "n/a" if ok is None else ("PASS" if ok else "MISS")
        lines.append(f"{target.label:58} {status:6}  {detail}")
    missing = [
        f"{m.id} [{s}]: {table[m.id][s]['missing']}"
        for m in metrics
        for s in systems
        if "missing" in table[m.id].get(s, {})
    ]
    if missing:
        lines.append("")
        lines.append("missing:")
        lines.extend(f"  {line}" for line in missing)
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "flamepy",
        "flame-testkit",
        "flmrun",
        "ray",
        "dask",
        "distributed",
        "pyarrow",
        "numpy",
        "cloudpickle",
        "grpcio",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
        info["cpu_model"] = sorted(models)
        with open("/proc/meminfo") as f:
            info["mem_total"] = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="override the repeat count")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--groups", default=",".join(GROUPS), help="comma-separated subset")
    parser.add_argument("--scale", type=parse_scale, default=None, help="g levels, e.g. 1k,20k")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply timeouts")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument(
        "--render", type=Path, default=None, help="print the report of a saved results JSON"
    )
    opts = parser.parse_args()
    opts.systems = [s for s in opts.systems.split(",") if s]
    opts.groups = [g for g in opts.groups.split(",") if g]
    for name, allowed in (("systems", SYSTEMS), ("groups", GROUPS)):
        unknown = set(getattr(opts, name)) - set(allowed)
        if unknown:
            parser.error(f"unknown {name}: {sorted(unknown)}")
    return opts


def render_saved(path: Path) -> str:
    """The report of an earlier run, from its results JSON."""
    document = json.loads(path.read_text())
    sizes = Sizes(**{**document["sizes"], "scale": tuple(document["sizes"]["scale"])})
    saved = document["metrics"]
    metrics = [m for m in catalog(sizes) if m.id in saved]
    table = {m.id: saved[m.id]["systems"] for m in metrics}
    systems = [s for s in SYSTEMS if any(s in table[m.id] for m in metrics)]
    return render(table, metrics, systems, sizes)


def main() -> int:
    opts = parse_args()
    if opts.render is not None:
        print(render_saved(opts.render))
        return 0
    sizes = sizes_for(opts.quick, opts.repeats, opts.scale)
    systems: list[str] = opts.systems
    started = time.perf_counter()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    info = machine()
    print(f"bench ({'quick' if opts.quick else 'full'}): {', '.join(systems)}; {sizes}")
    runs: list[Run] = []
    for group in opts.groups:
        if group == "cold":
            for repeat in range(sizes.repeats):  # fresh processes, round-robin
                runs.extend(run_system(s, group, repeat, opts) for s in systems)
        else:
            runs.extend(run_system(s, group, 0, opts) for s in systems)
    info["loadavg_end"] = os.getloadavg()
    metrics = [m for m in catalog(sizes) if m.group in opts.groups]
    table = collect(runs, metrics, systems)
    report = render(table, metrics, systems, sizes)
    elapsed = time.perf_counter() - started
    print()
    print(report)
    print(
        f"\n{len(runs)} processes in {elapsed:.0f}s; load average {info['loadavg_start']} -> "
        f"{info['loadavg_end']}"
    )
    out = opts.out or RESULTS / f"bench-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "timestamp": stamp,
        "mode": "quick" if opts.quick else "full",
        "argv": sys.argv[1:],
        "sizes": sizes.__dict__,
        "machine": info,
        "versions": versions(),
        "elapsed_s": elapsed,
        "metrics": {
            m.id: {
                "label": m.label,
                "unit": m.unit,
                "better": m.better,
                "info": m.info,
                "systems": table[m.id],
            }
            for m in metrics
        },
        "targets": [
            {"target": t.label, "ok": ok, "detail": detail}
            for t in targets(sizes)
            if t.group in opts.groups
            for ok, detail in [t.check(table)]
        ],
        "runs": [run.__dict__ for run in runs],
        "report": report,
    }
    out.write_text(json.dumps(document, indent=1, default=str))
    print(f"results: {out}")
    # Ours must all give a number, and each must be comparable with some peer; a
    # peer failing at one size is a result (listed under "missing"), not an error.
    ours = [
        f"{m.id} [{s}]"
        for m in metrics
        for s in OURS
        if not m.info and "missing" in table[m.id].get(s, {})
    ]
    peers = [s for s in systems if s in PEERS]
    alone = [
        m.id
        for m in metrics
        if not m.info
        and m.systems is None
        and peers
        and all("missing" in table[m.id].get(s, {"missing": 1}) for s in peers)
    ]
    if ours or alone:
        print(
            f"no number for flame: {ours or 'none'}; no peer number: {alone or 'none'}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
