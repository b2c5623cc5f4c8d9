"""The local executor manager: binds instances to sessions and feeds them tasks.

One asyncio coroutine per executor, never a thread.  Lifecycle per binding
(flame-wire.md §5.1): launch a process, wait for its socket, OnSessionEnter once,
then OnTaskInvoke one task at a time, then OnSessionLeave once, SIGTERM and, after
a grace period, SIGKILL.  Idle instances are released after the application's
``delay_release``; a crashed instance fails its running task and is replaced.

With ``task_stream`` on (the default), each instance is offered flmrun's task
stream (``_task_stream.py``); an instance that serves it gets its OnTaskInvoke
calls there, any other one over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import platform
import signal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from flame_testkit._installer import AppInstaller
from flame_testkit._launch import (
    InstanceDirs,
    expand,
    group_alive,
    instance_environment,
    keepalive_ms,
    process_state,
    prune_logs,
    spawn,
    tail,
    terminate,
)
from flame_testkit._state import AppRecord, ClusterState, SessionRecord, TaskRecord
from flame_testkit._task_stream import TaskStreamClient, TaskStreamError
from flamepy._types import TaskState
from flamepy.proto import shim_pb2, shim_pb2_grpc, types_pb2
from flmrun._errors import FlmrunError
from flmrun._stream import STREAM_ENV
from flmrun._unix import fits_socket_path

EXIT_CODE_WAIT = 5.0
"""How long a failed invoke waits for the instance's exit code (it is dying or dead)."""

log = logging.getLogger("flame_testkit.executor")

DEFAULT_CAPACITY = os.cpu_count() or 1
DEFAULT_SOCKET_TIMEOUT = 60.0
DEFAULT_ENTER_TIMEOUT = 600.0
DEFAULT_LEAVE_TIMEOUT = 10.0
DEFAULT_KILL_GRACE = 5.0
DEFAULT_TASK_STREAM = True
SCHEDULE_INTERVAL = 0.5
SOCKET_POLL = 0.005


@dataclass(frozen=True)
class ExecutorManagerConfig:
    work_dir: Path
    socket_dir: Path
    frontend_endpoint: str
    cache_endpoint: str | None = None
    ca_file: str | None = None
    node_name: str = "local"
    capacity: int = DEFAULT_CAPACITY
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
    enter_timeout: float = DEFAULT_ENTER_TIMEOUT
    leave_timeout: float = DEFAULT_LEAVE_TIMEOUT
    kill_grace: float = DEFAULT_KILL_GRACE
    task_stream: bool = DEFAULT_TASK_STREAM
    """Offer instances flmrun's task stream for their tasks (gRPC stays for the rest)."""
    log_level: str = "info"
    environ: Mapping[str, str] | None = None
    token_file: str | None = None
    """The cluster's access token file (TCP clusters), passed on to instances."""


class Waker:
    """Lets one coroutine sleep until it is woken or a timeout passes: a future and
    a timer, not the task that ``asyncio.wait_for`` would make on every wait."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> bool:
        """Wake the sleeper; whether one was sleeping."""
        return _resolve(self._waiter)

    async def sleep(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _resolve(waiter: asyncio.Future[None] | None) -> bool:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
        return True
    return False


BIND_BACKOFF_MIN = 0.1
BIND_BACKOFF_MAX = 5.0
"""Seconds before a session whose bind failed is tried again: doubling, bounded."""
MAX_TASK_RESULT = 4 * 1024 * 1024
"""The largest TaskResult a real executor manager accepts (gRPC's default, T2)."""
BIND_INSTALL = 10
BIND_LAUNCH = 11
BIND_ENTER = 12
BIND_UNKNOWN = 19
"""Bind result codes of flame-wire.md §5.4."""


class BindError(Exception):
    """An instance could not be bound; recorded as session event 1001."""

    def __init__(self, message: str, code: int = BIND_UNKNOWN) -> None:
        super().__init__(message)
        self.code = code


class SessionGone(Exception):
    """The session closed or disappeared while its instance was starting."""


@dataclass(eq=False)
class Executor:
    id: str
    session_id: str
    app_name: str
    state: int = types_pb2.ExecutorVoid
    process: asyncio.subprocess.Process | None = None
    channel: grpc.aio.Channel | None = None
    stub: shim_pb2_grpc.InstanceStub | None = None
    tasks: TaskStreamClient | None = None
    """The instance's task stream, when it serves one."""
    dirs: InstanceDirs | None = None
    current: TaskRecord | None = None
    waker: Waker = field(default_factory=Waker)
    """Wakes the executor while it waits idle for a task."""
    reclaim: bool = False
    resreq: types_pb2.ResourceRequirement | None = None
    cut_off: bool = False
    """Stopped while running a task: its worker is busy, so leave is not asked for."""
    runner: asyncio.Task[None] | None = None
    abandoned: str | None = None
    """Why it is stopped at once (its session's client is gone)."""

    def poke(self) -> bool:
        """Wake the executor if it waits idle; whether it did."""
        return self.waker.wake()


LOGS_KEPT = 400
"""Instance log files kept in ``<work dir>/logs`` (two per launch); older go."""
INSTANCE_KEEPALIVE_MS = keepalive_ms()
INSTANCE_OPTIONS = (
    ("grpc.keepalive_time_ms", INSTANCE_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", INSTANCE_KEEPALIVE_MS),
    ("grpc.http2.ping_timeout_ms", INSTANCE_KEEPALIVE_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
"""The executor pings each instance every 10 s (``FLAME_KEEPALIVE`` seconds when
set); one that does not answer within as long again (stopped, or hung in native
code) is treated as failed."""

MAX_EXECUTORS_PER_NODE = 128
"""A real node runs at most 128 executors (S5), whatever their resreq."""


def _cpu(resreq: types_pb2.ResourceRequirement | None) -> int:
    """CPUs an instance takes from the node: its resreq's (a session that asks for
    none, as a nested Runner's does, takes no slot); 1 without a resreq."""
    return resreq.cpu if resreq is not None else 1


def _mem(resreq: types_pb2.ResourceRequirement | None) -> int:
    return resreq.memory if resreq is not None else 0


class ExecutorManager:
    """Schedules instances for the sessions in a :class:`ClusterState`."""

    def __init__(self, state: ClusterState, config: ExecutorManagerConfig) -> None:
        self.state = state
        self.config = config
        self.node_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self._backoff: dict[str, float] = {}
        """Session id -> loop time before which no new bind is tried (after a failure)."""
        self.executors: dict[str, Executor] = {}
        self.launched_pids: list[int] = []
        self._runners: set[asyncio.Task[None]] = set()
        self._unbinds: set[asyncio.Future[None]] = set()
        self._waker = Waker()
        self._wake_pending = False
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.installer = AppInstaller(
            config.work_dir / "installs",
            cache_ca_file=config.ca_file,
            cache_token_file=config.token_file,
        )
        state.subscribe(self._on_change)

    # -- control --------------------------------------------------------------------

    async def start(self) -> None:
        for path in (self.config.work_dir, self.config.socket_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.config.work_dir / "logs").mkdir(mode=0o700, exist_ok=True)
        self._loop_task = asyncio.create_task(self._schedule_loop(), name="flame-scheduler")
        self._watch_task = asyncio.create_task(self._watch_loop(), name="flame-instance-watch")

    async def stop(self) -> None:
        """Release every instance (leave, SIGTERM, SIGKILL) and stop scheduling."""
        self._stopping = True
        for task in (self._loop_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.installer.cancel_all()
        for ex in self.executors.values():
            ex.poke()
        runners = list(self._runners)
        for runner in runners:
            runner.cancel()  # interrupts idle waits and running tasks
        budget = self.config.kill_grace + self.config.leave_timeout + 5
        if runners:
            await asyncio.wait(runners, timeout=budget)
        if self._unbinds:
            await asyncio.wait(list(self._unbinds), timeout=budget)
        for pid in self.launched_pids:  # last resort: nothing may outlive the manager
            if group_alive(pid):
                log.warning("killing leftover instance process group %d", pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)  # noqa: ASYNC222 - already SIGKILLed

    async def _watch_loop(self) -> None:
        """Fail the task of an instance that is stopped (SIGSTOP) for longer than the
        keepalive: gRPC calls notice by themselves (keepalive pings), the task
        stream is a plain socket, so its instances are looked at here."""
        interval = INSTANCE_KEEPALIVE_MS / 1000
        stopped_since: dict[str, float] = {}
        while not self._stopping:
            await asyncio.sleep(interval)
            now = asyncio.get_running_loop().time()
            for ex in list(self.executors.values()):
                pid = ex.process.pid if ex.process is not None else None
                if ex.current is None or ex.tasks is None or pid is None:
                    stopped_since.pop(ex.id, None)
                    continue
                if process_state(pid) != "T":
                    stopped_since.pop(ex.id, None)
                    continue
                since = stopped_since.setdefault(ex.id, now)
                if now - since >= interval:
                    log.warning("instance %s (pid %d) is stopped; failing its task", ex.id, pid)
                    ex.tasks.abort(
                        f"the instance (pid {pid}) is stopped and does not answer "
                        "(SIGSTOP, or a debugger)"
                    )
                    stopped_since.pop(ex.id, None)
            for gone in set(stopped_since) - set(self.executors):
                del stopped_since[gone]

    # -- notifications ----------------------------------------------------------------

    def _on_change(self, kind: str, session: SessionRecord, task: TaskRecord | None) -> None:
        if task is not None:
            if task.state != TaskState.PENDING:
                return
            # A new task: an idle instance of its session takes it; only when there is
            # none may the scheduler have to start one.
            for ex in self.executors.values():
                if ex.session_id == session.id and ex.poke():
                    return
            self._wake()
            return
        self._wake()
        gone = kind == "removed" or not session.open
        for ex in list(self.executors.values()):
            if ex.session_id != session.id:
                continue
            if gone and ex.state == types_pb2.ExecutorBinding and ex.runner is not None:
                # Closed or removed while its instance was still being set up (a slow
                # download, say): free the slot now, not when the setup ends.
                ex.abandoned = f"session {session.id} was closed while its instance started"
                ex.runner.cancel()
            else:
                ex.poke()

    def _wake(self) -> None:
        """Ask for a scheduling pass (soon, once, however often it is asked)."""
        if not self._waker.wake():
            self._wake_pending = True

    # -- scheduling -------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while not self._stopping:
            if not self._wake_pending:
                await self._waker.sleep(SCHEDULE_INTERVAL)
            self._wake_pending = False
            try:
                self._schedule()
            except Exception:  # pragma: no cover - keep scheduling whatever happens
                log.exception("scheduling pass failed")

    def _schedule(self) -> None:
        """Start instances: first for sessions with tasks waiting, then (only when no
        session is short of instances for its tasks) up to each ``min_instances``.

        As a real cluster (flame-server-semantics.md): an instance takes its
        session's ``resreq`` from the node (``capacity`` CPUs, the machine's memory;
        S5), only the session's ``max_instances`` bounds it (0: none at all; S3),
        and a session gets no new instance while one of a higher priority has tasks
        waiting (S6).  A resreq no node can ever hold fails the session's tasks
        with a message that says so, where a real cluster leaves them Pending.

        Putting tasks first matters on a small node: an idle instance kept for
        ``min_instances`` is released for a session that has work, and must not be
        started again while that work waits, or the two would take turns forever.
        """
        free_cpu = self.config.capacity - sum(_cpu(e.resreq) for e in self.executors.values())
        free_mem = self.node_memory - sum(_mem(e.resreq) for e in self.executors.values())
        candidates = []
        now = asyncio.get_running_loop().time()
        for session in list(self.state.wanting.values()):
            if not session.open or self.state.retry_limit_reached(session.id):
                continue
            if self._backoff.get(session.id, 0.0) > now:
                continue  # the scheduling loop looks again within SCHEDULE_INTERVAL
            app = self.state.apps.get(session.spec.application)
            if app is None:
                continue
            unfit = self._never_fits(session.spec.resreq)
            if unfit is not None:
                if session.unschedulable is None:
                    self.state.mark_unschedulable(session.id, unfit)
                continue
            bound = sum(1 for e in self.executors.values() if e.session_id == session.id)
            limit = session.max_instances if session.max_instances is not None else math.inf
            demand = session.counts[TaskState.PENDING] + session.counts[TaskState.RUNNING]
            candidates.append((session, app, bound, limit, demand))
        for sid in [k for k, until in self._backoff.items() if until <= now]:
            del self._backoff[sid]
        waiting = [c[0].spec.priority for c in candidates if c[0].counts[TaskState.PENDING]]
        top = max(waiting, default=0)
        candidates = [c for c in candidates if c[0].spec.priority >= top]

        def fits(session: SessionRecord) -> bool:
            if len(self.executors) >= MAX_EXECUTORS_PER_NODE:
                return False
            return _cpu(session.spec.resreq) <= free_cpu and _mem(session.spec.resreq) <= free_mem

        def launch(session: SessionRecord, app: AppRecord) -> None:
            nonlocal free_cpu, free_mem
            self._launch(session, app)
            free_cpu -= _cpu(session.spec.resreq)
            free_mem -= _mem(session.spec.resreq)

        short = False
        for session, app, bound, limit, demand in candidates:
            missing = int(min(limit, demand)) - bound
            if missing <= 0 or session.counts[TaskState.PENDING] == 0:
                continue
            if not fits(session):
                short = True
                self._reclaim_idle(1, exclude=session.id)
                continue
            while missing > 0 and fits(session):
                launch(session, app)
                missing -= 1
            if missing > 0:
                short = True
                self._reclaim_idle(missing, exclude=session.id)
        if short:
            return
        for session, app, _, limit, _ in candidates:
            bound = sum(1 for e in self.executors.values() if e.session_id == session.id)
            missing = int(min(limit, session.spec.min_instances)) - bound
            while missing > 0 and fits(session):
                launch(session, app)
                missing -= 1

    def _never_fits(self, resreq: types_pb2.ResourceRequirement) -> str | None:
        """Why no instance with ``resreq`` can ever run on this node (None: it can)."""
        if resreq.gpu > 0:
            return (
                f"the session asks for {resreq.gpu} GPU(s) and this local node has none; a "
                "real cluster keeps such tasks Pending until a node with GPUs has room"
            )
        if _cpu(resreq) > self.config.capacity:
            return (
                f"the session asks for {resreq.cpu} CPU(s) per instance and this local node "
                f"has {self.config.capacity}; ask for less, or raise the cluster's capacity"
            )
        if _mem(resreq) > self.node_memory:
            return (
                f"the session asks for {resreq.memory} bytes of memory per instance and this "
                f"local node has {self.node_memory}"
            )
        return None

    def _reclaim_idle(self, wanted: int, exclude: str) -> None:
        """Ask idle instances of other sessions to release, to free capacity."""
        for ex in self.executors.values():
            if wanted <= 0:
                return
            if ex.session_id != exclude and ex.current is None and not ex.reclaim:
                session = self.state.sessions.get(ex.session_id)
                if session is not None and session.pending:
                    continue
                ex.reclaim = True
                ex.poke()
                wanted -= 1

    def abandon(self, session_id: str, reason: str = "its client is gone") -> int:
        """Stop the instances of ``session_id`` at once, mid-task or mid-install (the
        session was reaped); returns how many."""
        stopped = 0
        for ex in list(self.executors.values()):
            if ex.session_id == session_id and ex.runner is not None and not ex.runner.done():
                ex.abandoned = reason
                ex.runner.cancel()
                stopped += 1
        return stopped

    def _launch(self, session: SessionRecord, app: AppRecord) -> None:
        ex = Executor(id=str(uuid.uuid4()), session_id=session.id, app_name=app.name)
        ex.resreq = session.spec.resreq
        self.executors[ex.id] = ex
        runner = asyncio.create_task(self._run(ex, app), name=f"executor-{ex.id[:8]}")
        ex.runner = runner
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)

    # -- one executor -----------------------------------------------------------------

    async def _run(self, ex: Executor, app: AppRecord) -> None:
        try:
            try:
                await self._bind(ex, app)
            except (asyncio.CancelledError, SessionGone):
                raise
            except Exception as exc:
                # Every failure on the bind path counts toward the retry limit, with
                # backoff: an unexpected one as "unknown" (19), its traceback logged
                # here, never sent.
                err = exc if isinstance(exc, BindError) else None
                if err is None:
                    log.exception("binding %s to session %s failed", ex.id, ex.session_id)
                    err = BindError(f"{type(exc).__name__}: {exc}", BIND_UNKNOWN)
                else:
                    log.warning("bind of %s to session %s failed: %s", ex.id, ex.session_id, err)
                session = self.state.sessions.get(ex.session_id)
                failures = session.bind_failures + 1 if session is not None else 1
                self._backoff[ex.session_id] = asyncio.get_running_loop().time() + min(
                    BIND_BACKOFF_MAX, BIND_BACKOFF_MIN * 2 ** (failures - 1)
                )
                self.state.record_bind_failure(
                    ex.session_id,
                    f"Executor {ex.id} on node {self.config.node_name} failed to bind session "
                    f"with return_code {err.code}: {err}",
                )
            else:
                self._backoff.pop(ex.session_id, None)
                await self._serve(ex, app)
        except (asyncio.CancelledError, SessionGone):
            pass
        except Exception:  # pragma: no cover - logged, the instance is released below
            log.exception("executor %s failed", ex.id)
        finally:
            unbind = asyncio.ensure_future(self._unbind(ex))
            self._unbinds.add(unbind)
            unbind.add_done_callback(self._unbinds.discard)
            try:
                await asyncio.shield(unbind)
            finally:
                self.executors.pop(ex.id, None)
                self._wake()

    async def _bind(self, ex: Executor, app: AppRecord) -> None:
        ex.state = types_pb2.ExecutorBinding
        cfg = self.config
        spec = app.spec
        base = dict(cfg.environ if cfg.environ is not None else os.environ)
        ex.dirs = InstanceDirs.create(spec, app.name, cfg.work_dir, ex.id)
        socket_path = cfg.socket_dir / f"{ex.id}.sock"
        stream_path = cfg.socket_dir / f"{ex.id}.tasks"
        offer_stream = cfg.task_stream and fits_socket_path(str(stream_path))
        try:
            installed = await self.installer.install(app.name, spec)
        except FlmrunError as exc:
            raise BindError(
                f"installing the package of application {app.name} failed: {exc}", BIND_INSTALL
            ) from exc
        env = instance_environment(
            spec,
            base,
            socket_path=socket_path,
            frontend_endpoint=cfg.frontend_endpoint,
            cache_endpoint=cfg.cache_endpoint,
            ca_file=cfg.ca_file,
            log_level=cfg.log_level,
            app_dir=ex.dirs.app_dir,
            installer_env=installed,
            token_file=cfg.token_file,
        )
        env.pop(STREAM_ENV, None)  # never an offer inherited from our own environment
        if offer_stream:
            env[STREAM_ENV] = str(stream_path)
        command = expand(spec.command, env, base) if spec.HasField("command") else ""
        if not command:
            raise BindError(f"application {app.name} has no command to launch", BIND_LAUNCH)
        args = [expand(a, env, base) for a in spec.arguments]
        stderr = cfg.work_dir / "logs" / f"{ex.id}.err"
        prune_logs(cfg.work_dir / "logs", LOGS_KEPT)
        try:
            ex.process = await spawn(
                command,
                args,
                cwd=ex.dirs.process_dir,
                env=env,
                stdout=cfg.work_dir / "logs" / f"{ex.id}.out",
                stderr=stderr,
            )
        except OSError as exc:
            raise BindError(
                f"cannot start {command!r} for application {app.name}: {exc}", BIND_LAUNCH
            ) from exc
        self.launched_pids.append(ex.process.pid)
        await self._wait_socket(ex, socket_path, stderr)
        # Keepalive: a stopped instance is noticed (its call fails) instead of
        # holding the executor, and the session, forever.
        ex.channel = grpc.aio.insecure_channel(f"unix://{socket_path}", options=INSTANCE_OPTIONS)
        ex.stub = shim_pb2_grpc.InstanceStub(ex.channel)  # type: ignore[no-untyped-call]
        # An instance that took the offer listened on the stream before its gRPC socket.
        if offer_stream and stream_path.exists():
            ex.tasks = await TaskStreamClient.connect(stream_path)
        session = self.state.sessions.get(ex.session_id)
        if session is None or not session.open:
            raise SessionGone(ex.session_id)
        context = shim_pb2.SessionContext(session_id=session.id)
        context.application.name = app.name
        context.application.shim = spec.shim
        for name in ("image", "command", "working_directory", "url", "installer"):
            if spec.HasField(name):
                setattr(context.application, name, getattr(spec, name))
        if session.spec.HasField("common_data"):
            context.common_data = session.spec.common_data
        try:
            result = await ex.stub.OnSessionEnter(
                context, timeout=cfg.enter_timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            raise BindError(
                f"on_session_enter failed: {exc.details()}{self._stderr_note(ex, stderr)}",
                BIND_ENTER,
            ) from exc
        if result.return_code != 0:
            raise BindError(f"on_session_enter failed: {result.message}", BIND_ENTER)
        ex.state = types_pb2.ExecutorBound

    async def _wait_socket(self, ex: Executor, socket_path: Path, stderr: Path) -> None:
        assert ex.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.socket_timeout
        while not socket_path.exists():  # noqa: ASYNC240 - a stat, polled like the real one
            session = self.state.sessions.get(ex.session_id)
            if self._stopping or session is None or not session.open:
                raise SessionGone(ex.session_id)
            if ex.process.returncode is not None:
                raise BindError(
                    f"instance exited with code {ex.process.returncode} before creating its "
                    f"socket{self._stderr_note(ex, stderr)}",
                    BIND_LAUNCH,
                )
            if loop.time() > deadline:
                raise BindError(
                    f"instance did not create its socket {socket_path} within "
                    f"{self.config.socket_timeout:g}s{self._stderr_note(ex, stderr)}",
                    BIND_LAUNCH,
                )
            await asyncio.sleep(SOCKET_POLL)

    @staticmethod
    def _stderr_note(ex: Executor, stderr: Path) -> str:
        text = tail(stderr)
        return f"; stderr: {text}" if text else ""

    def _should_release(self, ex: Executor, idle_deadline: float) -> bool:
        session = self.state.sessions.get(ex.session_id)
        if self._stopping or ex.reclaim or session is None or not session.open:
            return True
        if asyncio.get_running_loop().time() < idle_deadline:
            return False
        bound = sum(1 for e in self.executors.values() if e.session_id == ex.session_id)
        return bound > session.spec.min_instances

    async def _serve(self, ex: Executor, app: AppRecord) -> None:
        assert ex.stub is not None
        loop = asyncio.get_running_loop()
        idle_deadline = loop.time() + app.delay_release
        while True:
            if self._stopping or ex.reclaim:
                return
            task = self.state.take_pending(ex.session_id)
            if task is None:
                if self._should_release(ex, idle_deadline):
                    return
                timeout = max(0.0, idle_deadline - loop.time()) or SCHEDULE_INTERVAL
                await ex.waker.sleep(timeout)
                continue
            if not await self._invoke(ex, task):
                return  # the instance is broken: release it, the scheduler replaces it
            idle_deadline = loop.time() + app.delay_release

    async def _invoke(self, ex: Executor, task: TaskRecord) -> bool:
        assert ex.stub is not None
        ex.current = task
        context = shim_pb2.TaskContext(task_id=str(task.id), session_id=task.session_id)
        if task.input is not None:
            context.input = task.input
        try:
            if ex.tasks is not None:
                result = await ex.tasks.invoke(context)
            else:
                result = await ex.stub.OnTaskInvoke(context)
        except asyncio.CancelledError:
            ex.cut_off = True
            why = ex.abandoned or "the local cluster stopped while the task ran"
            self.state.complete_task(task.session_id, task.id, -1, None, why)
            if ex.abandoned is not None:
                raise SessionGone(ex.abandoned) from None  # this executor only
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # T2, over gRPC
                self._output_too_large(ex, task, exc.details() or "")
                return True
            return await self._instance_failed(ex, task, exc.code().name, exc.details())
        except TaskStreamError as exc:
            return await self._instance_failed(ex, task, exc.code, exc.details)
        finally:
            ex.current = None
        if result.ByteSize() > MAX_TASK_RESULT:  # T2: the task stream allows more
            self._output_too_large(ex, task, f"the result is {result.ByteSize()} bytes")
            return True
        self.state.complete_task(
            task.session_id,
            task.id,
            result.return_code,
            result.output if result.HasField("output") else None,
            result.message if result.HasField("message") else None,
        )
        return True

    def _output_too_large(self, ex: Executor, task: TaskRecord, details: str) -> None:
        """T2: a real executor manager keeps gRPC's 4 MiB limit for the instance's
        reply, and the task fails; the instance stays."""
        self.state.complete_task(
            task.session_id,
            task.id,
            -1,
            None,
            f"instance {ex.id}: the task's result is over the executor manager's 4 MiB "
            f"message limit ({details}); return large data through the object cache",
        )

    async def _instance_failed(
        self, ex: Executor, task: TaskRecord, status: str, details: str | None
    ) -> bool:
        """The instance broke while running ``task``: the task fails visibly (I1)."""
        code = None
        if ex.process is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                code = await asyncio.wait_for(ex.process.wait(), EXIT_CODE_WAIT)
        exit_note = f"; the instance exited with code {code}" if code is not None else ""
        stderr = self.config.work_dir / "logs" / f"{ex.id}.err"
        self.state.complete_task(
            task.session_id,
            task.id,
            -1,
            None,
            f"instance {ex.id} failed while running the task: {status}: "
            f"{details}{exit_note}{self._stderr_note(ex, stderr)}",
        )
        return False

    async def _unbind(self, ex: Executor) -> None:
        ex.state = types_pb2.ExecutorUnbinding
        if ex.tasks is not None:
            await ex.tasks.close()
        alive = ex.process is not None and ex.process.returncode is None
        if ex.stub is not None and alive and not ex.cut_off:  # a busy one would not answer
            try:
                await ex.stub.OnSessionLeave(
                    types_pb2.EmptyRequest(),
                    timeout=self.config.leave_timeout,
                )
            except grpc.aio.AioRpcError as exc:
                log.info("on_session_leave of %s failed: %s", ex.id, exc.details())
        if ex.channel is not None:
            await ex.channel.close()
        ex.state = types_pb2.ExecutorReleasing
        if ex.process is not None:
            await terminate(ex.process, self.config.kill_grace)
        for suffix in (".sock", ".tasks"):
            with contextlib.suppress(OSError):
                (self.config.socket_dir / f"{ex.id}{suffix}").unlink()
        if ex.dirs is not None:
            ex.dirs.remove()
        ex.state = types_pb2.ExecutorReleased

    # -- views ------------------------------------------------------------------------

    def executor_protos(self) -> list[types_pb2.Executor]:
        out = []
        for ex in self.executors.values():
            msg = types_pb2.Executor()
            msg.metadata.id = msg.metadata.name = ex.id
            msg.spec.node = self.config.node_name
            if ex.resreq is not None:
                msg.spec.resreq.CopyFrom(ex.resreq)
            msg.status.state = ex.state  # type: ignore[assignment]
            msg.status.session_id = ex.session_id
            out.append(msg)
        return out

    def node_protos(self) -> list[types_pb2.Node]:
        node = types_pb2.Node()
        node.metadata.id = node.metadata.name = self.config.node_name
        node.spec.hostname = self.config.node_name
        node.status.state = types_pb2.Ready
        memory = self.node_memory
        node.status.capacity.cpu = node.status.allocatable.cpu = self.config.capacity
        node.status.capacity.memory = node.status.allocatable.memory = memory
        node.status.info.arch = platform.machine()
        node.status.info.os = platform.system().lower()
        return [node]
