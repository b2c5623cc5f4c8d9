"""The asyncio core shared by ``Runner`` and ``AsyncRunner``.

:class:`RunnerCore` owns the application (package, upload, registration cloned
from the template, cleanup); :class:`ServiceCore` owns one service's context and
session, and hands its calls to its :class:`~flamepy.runner._admission.Admission`
(order, arguments, batches).  The front-ends in ``_runner.py`` only translate.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flamepy._async_client import AsyncConnection, AsyncSession, generate_session_id
from flamepy._cache.client import client_for
from flamepy._config import FlameContext
from flamepy._embedded import check_capacity, resolve_cache_endpoint, resolve_endpoint
from flamepy._errors import (
    AlreadyExistsError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    TaskCancelledError,
)
from flamepy._owner import identity, owned_tempdir
from flamepy._types import (
    Application,
    ApplicationAttributes,
    ExecutorState,
    ResourceRequirement,
    SessionAttributes,
    SessionState,
)
from flamepy.core.cache import delete_objects, put_object_async
from flamepy.runner._admission import Admission
from flamepy.runner._batch import Batcher, Call
from flamepy.runner._calls import succeeded
from flamepy.runner._controls import CallControls
from flamepy.runner._deps import INDEX_VARIABLES
from flamepy.runner._output import RemoteOutput, directory_key, output_enabled
from flamepy.runner._package import DEFAULT_SIZE_BUDGET, Package
from flamepy.runner._pickling import bind_constructor, check_arguments, pickle_context
from flamepy.runner._publish import PackagePreview, Publisher
from flamepy.runner._storage import PackageStorage, storage_for
from flamepy.runner.types import OUTPUT_ATTRIBUTE, RunnerContext, SessionContext, is_function

log = logging.getLogger("flamepy.runner")


def inside_an_instance() -> bool:
    """Whether this process is a Flame instance (a Runner call runs a Runner)."""
    return bool(os.environ.get("FLAME_INSTANCE_ENDPOINT"))


def default_root() -> Path:
    """What a Runner packages by default: the working directory, or, inside an
    instance, the package that instance runs (so the code it calls is there)."""
    src = os.environ.get("FLAME_PACKAGE_SRC")
    if inside_an_instance() and src and Path(src).is_dir():
        return Path(src)
    return Path.cwd()


NESTED_RESREQ = ResourceRequirement(cpu=0, memory=0, gpu=0)
"""What the services of a Runner inside an instance ask for by default: no CPU and
no memory of a node, since the calling instance waits for them; so nested calls
cannot deadlock a cluster whose every slot runs an outer call."""
APP_SUFFIX_HEX = 8
"""Hex digits of the suffix that makes each Runner's application name its own."""
CLOSE_WAIT = 60.0
CLOSE_RETRY_MIN = 0.02
CLOSE_RETRY_MAX = 1.0
"""Seconds between tries to close a session whose task still runs."""
"""Seconds a closing service waits for its calls in flight."""
LEAVE_WAIT = 10.0
"""Seconds a closing Runner waits for the instances of its stateful services to leave."""
LEAVE_POLL = 0.02
_STILL_BOUND = frozenset({ExecutorState.BINDING, ExecutorState.BOUND, ExecutorState.UNBINDING})
RESERVED_NAMES = frozenset({"close", "methods", "session_id", "wait_ready"})
"""RunnerService attributes; a user method with one of these names is not wrapped."""


def public_methods(obj: Any) -> list[str]:
    names = []
    for name in dir(obj):
        if name.startswith("_") or name in RESERVED_NAMES:
            continue
        try:
            value = inspect.getattr_static(obj, name)
        except AttributeError:
            continue
        if isinstance(value, (staticmethod, classmethod)) or callable(value):
            names.append(name)
    return sorted(names)


def clone_template(
    template: Application,
    name: str,
    url: str,
    python_version: str | None,
    index_settings: Mapping[str, str] | None = None,
) -> ApplicationAttributes:
    """The application spec Runner registers, derived from the template (config §5)."""
    environments = dict(template.environments or {})
    if python_version:
        environments["FLAME_PYTHON_VERSION"] = python_version
    environments.update(index_settings or {})
    workdir = None
    if template.working_directory:
        workdir = f"{template.working_directory.rstrip('/')}/{name}"
    return ApplicationAttributes(
        image=template.image,
        description=f"Runner application: {name}",
        labels=template.labels,
        command=template.command,
        arguments=template.arguments,
        environments=environments,
        working_directory=workdir,
        max_instances=template.max_instances,
        delay_release=template.delay_release,
        schema=template.schema,
        url=url,
        installer=template.installer,
    )


class RunnerCore:
    """One Runner application, on the event loop that runs its calls."""

    def __init__(
        self,
        name: str,
        *,
        fail_if_exists: bool = False,
        dependencies: Sequence[str] | None = None,
        python_version: str | None = None,
        excludes: Sequence[str] = (),
        storage: str | None = None,
        template: str | None = None,
        root: str | os.PathLike[str] | None = None,
        size_budget: int = DEFAULT_SIZE_BUDGET,
        index_settings: Mapping[str, str] | None = None,
        dry_run: bool = False,
        local_capacity: int | None = None,
        output: bool | None = None,
    ) -> None:
        if not name:
            raise InvalidArgumentError("a Runner needs an application name")
        self.local_capacity = check_capacity(local_capacity)
        unknown = sorted(set(index_settings or {}) - set(INDEX_VARIABLES))
        if unknown:
            raise InvalidArgumentError(
                f"index_settings accepts {', '.join(INDEX_VARIABLES)}; not {', '.join(unknown)}"
            )
        self.index_settings = dict(index_settings or {})
        self.dry_run = dry_run
        self.requested_name = name
        # Each Runner registers an application of its own: two programs that chose
        # the same name never run each other's code or clean up each other's
        # sessions; the chosen name stays visible as the prefix (flmctl list -a).
        self.name = f"{name}-{uuid.uuid4().hex[:APP_SUFFIX_HEX]}"
        self.fail_if_exists = fail_if_exists
        self.dependencies = list(dependencies or [])
        self.python_version = python_version
        self.excludes = list(excludes)
        self.storage_url = storage
        self.template_name = template
        self.root = Path(root) if root is not None else default_root()
        self.size_budget = size_budget
        self.conn: AsyncConnection | None = None
        self.owner = False
        self.package: Package | None = None
        self.package_url: str | None = None
        self.preview: PackagePreview | None = None
        self._publisher: Publisher | None = None
        self._storage: PackageStorage | None = None
        self._workdir: Path | None = None
        self.services: list[ServiceCore] = []
        self.output = output_enabled(output)
        self.remote_output: RemoteOutput | None = None

    @property
    def connection(self) -> AsyncConnection:
        if self.conn is None:
            raise InvalidArgumentError("the Runner is not open (use it in a with block)")
        return self.conn

    async def setup(self) -> None:
        if self.dry_run:
            await self.dry_run_package()
            return
        ctx = FlameContext()
        endpoint = await asyncio.to_thread(resolve_endpoint, ctx, self.local_capacity)
        self.cache_endpoint = await asyncio.to_thread(resolve_cache_endpoint, ctx)
        self.cache_ca = ctx.cache_tls.ca_file if ctx.cache_tls else None
        tls = ctx.tls
        self.conn = await AsyncConnection.connect(
            endpoint, ca_file=tls.ca_file if tls else None, timeout=ctx.connect_timeout
        )
        # What this Runner creates is its own: a local cluster reaps it if the program
        # is killed before it can clean up.
        self.conn.lease = identity()
        if self.output:
            self.remote_output = RemoteOutput(client_for(self.cache_endpoint, self.cache_ca))
        try:
            await self._register(ctx)
        except BaseException:
            await self.close()
            raise

    async def _register(self, ctx: FlameContext) -> None:
        conn = self.connection
        if self.fail_if_exists:
            taken = [a.name for a in await conn.list_applications() if self._same_name(a.name)]
            if taken:
                raise AlreadyExistsError(
                    f"a Runner named {self.requested_name!r} is already running on "
                    f"{conn.endpoint} (application {taken[0]}); choose another name, or drop "
                    "fail_if_exists to run beside it"
                )
        template_name = self.template_name or ctx.runner.template or "flmrun"
        template = await conn.get_application(template_name)
        if template is None:
            raise NotFoundError(
                f"the Runner template application {template_name!r} is not registered on "
                f"{conn.endpoint}; register it, or set runner.template in flame.yaml "
                "(or Runner(template=...)) to one that is"
            )
        storage_url = self.storage_url or (ctx.package.storage if ctx.package else None)
        # Packages are named by the chosen name and their content, not by this Runner's
        # application: Runners of one name, at once or one after another, share an
        # unchanged package; it stays after exit so the next run skips the upload.
        self._storage = storage = storage_for(
            storage_url,
            self.requested_name,
            cache_endpoint=self.cache_endpoint,
            cache_ca_file=self.cache_ca,
        )
        publisher = self._publisher_for(ctx)
        package = await publisher.publish(storage)
        self.package = package
        self.package_url = storage.url_for(package)
        attrs = clone_template(
            template, self.name, self.package_url, self.python_version, self.index_settings
        )
        await conn.register_application(self.name, attrs)
        self.owner = True
        await publisher.keep(storage)
        self.package = publisher.package

    def _publisher_for(self, ctx: FlameContext) -> Publisher:
        if self._publisher is None:
            self._workdir = owned_tempdir("flame-runner-")  # a killed Runner's is swept
            self._publisher = Publisher(
                self.root,
                self.requested_name,
                self._workdir,
                excludes=[*(ctx.package.excludes if ctx.package else ()), *self.excludes],
                dependencies=self.dependencies,
                size_budget=self.size_budget,
            )
        return self._publisher

    @property
    def package_uploaded(self) -> bool:
        return self._publisher is not None and self._publisher.uploaded

    async def dry_run_package(self) -> PackagePreview:
        """Package and report, without reaching any cluster."""
        try:
            preview = await self._publisher_for(FlameContext()).preview()
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
        self.preview = preview
        return preview

    def _same_name(self, application: str) -> bool:
        """Whether ``application`` is this Runner's name, or another Runner's of it."""
        wanted = self.requested_name
        return (
            application == wanted
            or re.fullmatch(re.escape(wanted) + f"-[0-9a-f]{{{APP_SUFFIX_HEX}}}", application)
            is not None
        )

    def new_service(
        self,
        execution_object: Any,
        autoscale: bool | None,
        warmup: int,
        resreq: ResourceRequirement | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        controls: CallControls | None = None,
    ) -> ServiceCore:
        if self.dry_run:
            raise InvalidArgumentError(
                "this Runner was made with dry_run=True: it packages and reports "
                "(Runner.preview), and runs nothing; drop dry_run to run calls"
            )
        if resreq is None and inside_an_instance():
            resreq = NESTED_RESREQ
        service = ServiceCore(self, execution_object, autoscale, warmup, resreq, args, kwargs)
        if controls is not None:
            service.set_controls(controls)
        self.services.append(service)
        return service

    async def put_object(self, obj: Any) -> Any:
        return await put_object_async(f"{self.name}/shared", obj)

    async def _wait_for_leave(self, conn: AsyncConnection, sessions: set[str]) -> None:
        """Wait (at most LEAVE_WAIT s) until no instance is bound to ``sessions``, so
        that a state written at session leave is not written after the cleanup."""
        deadline = time.monotonic() + LEAVE_WAIT
        while time.monotonic() < deadline:
            try:
                executors = await conn.list_executors()
            except Exception as exc:  # cleanup goes on regardless
                log.debug("cannot list executors at close: %s", exc)
                return
            if not any(e.session_id in sessions and e.state in _STILL_BOUND for e in executors):
                return
            await asyncio.sleep(LEAVE_POLL)
        log.warning("instances of %s did not leave within %ss", sorted(sessions), LEAVE_WAIT)

    async def interrupt(self) -> None:
        """Leave now (the ``with`` block ended with Ctrl-C): fail what has not
        finished, close the sessions without waiting for calls in flight, and clean
        up what can be (within INTERRUPT_WAIT s in all, see ``Runner.__exit__``).
        A task that is running cannot be stopped (Flame has no task cancellation):
        its session and the application are left, and one line says so."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        running: list[str] = []
        total = 0
        for service in self.services:
            in_flight, closed = await service.interrupt()
            total += in_flight
            if not closed:
                running.append(service.opened_session_id() or "?")
        self.services.clear()
        if running:
            self.owner = False
            log.warning(
                "interrupted: %d call(s) sent to the cluster are left to finish there: "
                "session(s) %s of application %s cannot be closed while a task runs "
                "(close them later with 'flmctl close')",
                total,
                ", ".join(running),
                self.name,
            )
        await self.close()

    async def close(self) -> None:
        """Close this Runner's sessions, then, if it registered the application,
        remove it, its cache objects and its package.

        A real cluster refuses to unregister an application that has an open session
        (flame-server-semantics.md A1): sessions are closed first, and when one must
        stay open because a task still runs, the application stays too, with a
        warning that names both."""
        errors: list[BaseException] = []
        stateful: list[str] = []
        left_open: list[str] = []
        for service in self.services:
            try:
                if not await service.close():
                    left_open.append(service.opened_session_id() or "?")
                opened = service.opened_session_id()
                if service.context.stateful and opened is not None:
                    stateful.append(opened)
            except Exception as exc:  # keep cleaning up
                errors.append(exc)
        self.services.clear()
        if self.remote_output is not None:  # the calls returned: their output was sent
            await self.remote_output.close()
        if self.owner and self.conn is not None and left_open:
            self.owner = False
            log.warning(
                "application %s is left registered: its session(s) %s still run a task; "
                "close them later with 'flmctl close', then unregister the application",
                self.name,
                ", ".join(left_open),
            )
        if self.owner and self.conn is not None:
            self.owner = False
            try:
                await self.conn.unregister_application(self.name)
            except NotFoundError:
                pass
            except Exception as exc:
                errors.append(exc)
            if stateful:  # their instances write the newest state at session leave
                await self._wait_for_leave(self.conn, set(stateful))
            try:
                await asyncio.to_thread(delete_objects, f"{self.name}/*")
            except Exception as exc:
                errors.append(exc)
            if self._publisher is not None and self._storage is not None:
                try:
                    await self._publisher.prune(self._storage, self.conn)
                except Exception as exc:
                    errors.append(exc)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.close()
        if errors:
            raise errors[0]


class ServiceCore:
    """One remote service: its context, its session, and the admission of its calls."""

    def __init__(
        self,
        runner: RunnerCore,
        execution_object: Any,
        autoscale: bool | None,
        warmup: int,
        resreq: ResourceRequirement | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
    ) -> None:
        self.runner = runner
        obj = execution_object
        is_class = isinstance(obj, type)
        if (args or kwargs) and not is_class:
            raise InvalidArgumentError("constructor arguments are only valid for a class")
        if is_class and (args or kwargs):
            obj = bind_constructor(obj, args, kwargs or {})
        if is_class and autoscale is None:
            autoscale = False  # a class keeps its state on one instance unless asked
        self.context = RunnerContext(obj, autoscale=autoscale, warmup=warmup)
        explicit = getattr(execution_object, "_session_context", None)
        sid = explicit.session_id if isinstance(explicit, SessionContext) else None
        self.session_id = sid or generate_session_id(runner.name)
        self.output_key = directory_key(runner.name, self.session_id) if runner.output else None
        if self.output_key is not None:
            setattr(self.context, OUTPUT_ATTRIBUTE, self.output_key)
        self.context_bytes = pickle_context(self.context, execution_object)
        self.resreq = resreq
        self.is_function = is_function(execution_object)
        self.methods = [] if self.is_function else public_methods(execution_object)
        ordered = not self.context.autoscale
        self.batcher = Batcher(self.session, self.cache_prefix, ordered)
        self._session: asyncio.Future[AsyncSession] | None = None
        self.controls = CallControls()
        self.admission = Admission(
            self.batcher,
            ordered,
            arm=lambda call: self.controls.arm(self.batcher, call, self.label),
            session_open=lambda: self.opened_session_id() is not None,
        )
        """Where its calls come in (``_admission``): ``start`` (sync API), ``call``
        (asyncio API) and ``cancel``."""
        obj = execution_object
        self.label = getattr(obj, "__qualname__", None) or type(obj).__qualname__

    def set_controls(self, controls: CallControls) -> None:
        """Its calls' retries and timeout (see ``_controls``)."""
        self.controls = controls
        controls.install(self.batcher, self.label)

    async def session(self) -> AsyncSession:
        if self._session is None:
            self._session = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._session)

    async def _open(self) -> AsyncSession:
        ref = await put_object_async(f"{self.runner.name}/{self.session_id}", self.context_bytes)
        shown = self.runner.remote_output
        if self.output_key is not None and shown is not None:
            await put_object_async(self.output_key, {"flame_output": 1})
            shown.follow(self.label, self.output_key)
        spec = SessionAttributes(
            application=self.runner.name,
            common_data=ref.encode(),
            min_instances=self.context.min_instances,
            max_instances=self.context.max_instances,
            resreq=self.resreq,
        )
        return await self.runner.connection.open_session(self.session_id, spec)

    def cache_prefix(self, session: AsyncSession) -> str:
        return f"{self.runner.name}/{session.id}"

    def new_call(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """A call's record; made in the caller's thread, run by :meth:`call`.  An
        argument that means nothing remotely (an open file, a lock) is refused."""
        if args or kwargs:
            check_arguments(args, kwargs)
        return self.batcher.new_call(method, args, kwargs)

    def opened_session_id(self) -> str | None:
        """The id of this service's session, if it was opened."""
        session = self._session
        return session.result().id if succeeded(session) else None  # type: ignore[union-attr]

    async def interrupt(self) -> tuple[int, bool]:
        """Leave now (Ctrl-C): fail every call not answered yet with
        TaskCancelledError, close the session once (which cancels its pending tasks)
        without waiting for calls in flight.  Returns how many calls were running or
        pending on the cluster, and whether the session could be closed."""
        error = TaskCancelledError("the Runner was interrupted before the call finished")
        self.admission.cancel_tasks()
        in_flight = self.batcher.interrupt(error)
        if self._session is None or not self._session.done() or self._session.exception():
            return in_flight, True
        session = self._session.result()
        if session.state != SessionState.OPEN:
            return in_flight, True
        try:
            await session.close()
        except InternalError:  # a task still runs: a real cluster keeps it open
            return in_flight, False
        return in_flight, True

    async def close(self) -> bool:
        """Let calls in flight finish (at most CLOSE_WAIT s), then close the session.

        A real cluster refuses to close a session while a task runs, and refuses to
        unregister an application with an open session (A1), so a task still
        running is waited for (up to CLOSE_WAIT s in all).  Returns False when the
        session is left open because a task still runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_WAIT
        pending = [c.outcome() for c in self.batcher.live] + self.admission.tasks()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_WAIT)
        if self._session is None:
            return True
        try:
            session = await self._session
        except Exception:
            return True  # it never opened
        if session.state != SessionState.OPEN:
            return True
        delay = CLOSE_RETRY_MIN
        while True:
            try:
                await session.close()
                return True
            except InternalError as exc:  # a task is still running
                if loop.time() + delay > deadline:
                    log.warning(
                        "session %s is left open: a task still runs after %.0fs (%s)",
                        session.id,
                        CLOSE_WAIT,
                        exc,
                    )
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, CLOSE_RETRY_MAX)
