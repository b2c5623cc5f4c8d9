"""What the dashboard shows, as JSON-ready dicts read from a running local cluster.

Each function reads the cluster's state on its event loop (where the servicers
change it), so a view is consistent; nothing here changes anything.  The pages
are views of these same documents (``/api/...``), so scripts can use them too.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flame_testkit._state import STATE_NAMES, TERMINAL, SessionRecord, TaskRecord
from flame_testkit.dashboard._failures import failure_of
from flamepy._types import TaskState
from flamepy.proto import types_pb2

if TYPE_CHECKING:
    from flame_testkit._cluster import LocalCluster

MAX_SESSIONS = 500
"""Sessions listed, at most: the open ones, then the newest closed ones."""
MAX_TASKS = 200
"""Tasks of a session listed, at most: the newest, and failed ones first."""
LOG_TAIL = 200
"""Lines of each of an instance's log files shown."""
SAMPLES = 240
"""Points of the live chart (one per :data:`SAMPLE_INTERVAL`: two minutes)."""
SAMPLE_INTERVAL = 0.5
_STATES = [s for s in TaskState]
_EXECUTOR_STATES = {v: k.removeprefix("Executor") for k, v in types_pb2.ExecutorState.items()}
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def applications(cluster: LocalCluster) -> dict[str, Any]:
    state = cluster.state
    rows = []
    for name, app in sorted(state.apps.items()):
        sessions = state.by_app.get(name, {})
        rows.append(
            {
                "name": name,
                "enabled": app.enabled,
                "command": app.spec.command,
                "url": app.spec.url if app.spec.HasField("url") else None,
                "sessions": len(sessions),
                "open_sessions": sum(1 for s in sessions.values() if s.open),
                "created": app.creation_time,
            }
        )
    return {"applications": rows}


def _counts(session: SessionRecord) -> dict[str, int]:
    return {STATE_NAMES[s].lower(): session.counts[s] for s in _STATES}


def _instances_by_session(cluster: LocalCluster) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    manager = cluster.executor_manager
    if manager is not None:
        for ex in manager.executors.values():
            found.setdefault(ex.session_id, []).append(ex.id)
    return found


def _session_row(session: SessionRecord, instances: list[str]) -> dict[str, Any]:
    return {
        "id": session.id,
        "application": session.spec.application,
        "state": "Open" if session.open else "Closed",
        "tasks": _counts(session),
        "total": session.next_task_id - 1,
        "instances": instances,
        "created": session.creation_time,
        "closed": session.completion_time,
        "unschedulable": session.unschedulable,
    }


def sessions(cluster: LocalCluster) -> dict[str, Any]:
    every = list(cluster.state.sessions.values())
    shown = [s for s in every if s.open]
    closed = sorted((s for s in every if not s.open), key=lambda s: s.creation_time, reverse=True)
    shown.extend(closed[: max(0, MAX_SESSIONS - len(shown))])
    shown.sort(key=lambda s: (not s.open, -s.creation_time, s.id))
    by_session = _instances_by_session(cluster)
    rows = [_session_row(s, by_session.get(s.id, [])) for s in shown[:MAX_SESSIONS]]
    return {"sessions": rows, "total": len(every)}


def _duration(task: TaskRecord) -> float | None:
    if task.started is not None and task.ended is not None:
        return round((task.ended - task.started) * 1000, 3)
    if task.started is not None and task.state == TaskState.RUNNING:
        return round((time.time() - task.started) * 1000, 3)
    return None


def _task_row(task: TaskRecord) -> dict[str, Any]:
    message = task.events[-1].message if task.events and task.state in TERMINAL else None
    failure = failure_of(task.output) if task.output else None
    shown = None
    if failure is not None:
        shown = {"type": failure.type_name, "message": failure.message}
        shown["traceback"] = failure.traceback
    return {
        "id": str(task.id),
        "state": STATE_NAMES[task.state],
        "created": task.creation_time,
        "completed": task.completion_time,
        "duration_ms": _duration(task),
        "message": message if task.state != TaskState.SUCCEED else None,
        "failure": shown,
    }


def session_tasks(cluster: LocalCluster, session_id: str) -> dict[str, Any] | None:
    state = cluster.state
    session = state.sessions.get(session_id)
    if session is None:
        return None
    newest: list[TaskRecord] = []
    for task_id in range(session.next_task_id - 1, 0, -1):
        if len(newest) >= MAX_TASKS:
            break
        task = state.task(session, task_id)
        if task is not None:
            newest.append(task)
    rows = [_task_row(t) for t in newest]
    rows.sort(key=lambda r: (r["failure"] is None and r["state"] != "Failed", -int(r["id"])))
    by_session = _instances_by_session(cluster)
    return {"session": _session_row(session, by_session.get(session.id, [])), "tasks": rows}


@dataclass
class _CpuSample:
    at: float
    ticks: int


@dataclass
class Sampler:
    """Samples, every :data:`SAMPLE_INTERVAL`, the tasks completed per second and the
    tasks pending (the live chart), and each instance's CPU use."""

    times: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    per_second: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    pending: deque[int] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    running: deque[int] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    _last_done: int | None = None
    _last_at: float = 0.0
    _cpu: dict[int, _CpuSample] = field(default_factory=dict)
    cpu_percent: dict[int, float] = field(default_factory=dict)

    def sample(self, cluster: LocalCluster) -> None:
        now = time.time()
        done = pending = running = 0
        for session in cluster.state.sessions.values():
            counts = session.counts
            done += counts[TaskState.SUCCEED] + counts[TaskState.FAILED]
            pending += counts[TaskState.PENDING]
            running += counts[TaskState.RUNNING]
        if self._last_done is not None and now > self._last_at:
            rate = max(0, done - self._last_done) / (now - self._last_at)
            self.times.append(now)
            self.per_second.append(round(rate, 1))
            self.pending.append(pending)
            self.running.append(running)
        self._last_done, self._last_at = done, now
        self._sample_cpu(cluster, now)

    def _sample_cpu(self, cluster: LocalCluster, now: float) -> None:
        seen = set()
        for pid in _instance_pids(cluster).values():
            seen.add(pid)
            ticks = _cpu_ticks(pid)
            if ticks is None:
                continue
            before = self._cpu.get(pid)
            if before is not None and now > before.at:
                used = (ticks - before.ticks) / _TICKS
                self.cpu_percent[pid] = round(100 * used / (now - before.at), 1)
            self._cpu[pid] = _CpuSample(now, ticks)
        for pid in set(self._cpu) - seen:
            self._cpu.pop(pid, None)
            self.cpu_percent.pop(pid, None)

    def rates(self) -> dict[str, Any]:
        return {
            "interval": SAMPLE_INTERVAL,
            "times": list(self.times),
            "per_second": list(self.per_second),
            "pending": list(self.pending),
            "running": list(self.running),
        }


def _instance_pids(cluster: LocalCluster) -> dict[str, int]:
    manager = cluster.executor_manager
    if manager is None:
        return {}
    return {
        ex.id: ex.process.pid
        for ex in manager.executors.values()
        if ex.process is not None and ex.process.returncode is None
    }


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def _rss(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def instances(cluster: LocalCluster, sampler: Sampler) -> dict[str, Any]:
    manager = cluster.executor_manager
    rows = []
    if manager is not None:
        for ex in manager.executors.values():
            pid = ex.process.pid if ex.process is not None else None
            alive = ex.process is not None and ex.process.returncode is None
            rows.append(
                {
                    "id": ex.id,
                    "session": ex.session_id,
                    "application": ex.app_name,
                    "state": _EXECUTOR_STATES.get(ex.state, str(ex.state)),
                    "pid": pid,
                    "cpu_percent": sampler.cpu_percent.get(pid) if pid and alive else None,
                    "rss": _rss(pid) if pid and alive else None,
                    "task": str(ex.current.id) if ex.current is not None else None,
                }
            )
    return {"instances": rows, "logs": str(cluster.logs_dir)}


def _tail(path: Path, lines: int) -> str | None:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except OSError:
        return None
    return b"\n".join(data.split(b"\n")[-lines - 1 :]).decode("utf-8", "replace")


def instance_log(cluster: LocalCluster, executor_id: str) -> dict[str, Any] | None:
    if not executor_id or "/" in executor_id or executor_id.startswith("."):
        return None
    out = _tail(cluster.logs_dir / f"{executor_id}.out", LOG_TAIL)
    err = _tail(cluster.logs_dir / f"{executor_id}.err", LOG_TAIL)
    if out is None and err is None:
        return None
    return {"id": executor_id, "stdout": out or "", "stderr": err or ""}


def cache_objects(cluster: LocalCluster) -> dict[str, Any]:
    if cluster.cache is None:
        return {"objects": [], "memory_used": 0, "max_memory": 0}
    store = cluster.cache.store
    rows = [
        {"key": key, "version": version, "size": size, "storage": where}
        for key, version, size, where in sorted(store.inventory())
    ]
    return {"objects": rows, "memory_used": store.memory_used, "max_memory": store.max_memory}


def summary(cluster: LocalCluster, sampler: Sampler) -> dict[str, Any]:
    state = cluster.state
    totals = dict.fromkeys((STATE_NAMES[s].lower() for s in _STATES), 0)
    for session in state.sessions.values():
        for s in _STATES:
            totals[STATE_NAMES[s].lower()] += session.counts[s]
    manager = cluster.executor_manager
    return {
        "applications": len(state.apps),
        "sessions": len(state.sessions),
        "open_sessions": sum(1 for s in state.sessions.values() if s.open),
        "instances": len(manager.executors) if manager is not None else 0,
        "capacity": cluster.config.capacity,
        "tasks": totals,
        "rates": sampler.rates(),
    }
