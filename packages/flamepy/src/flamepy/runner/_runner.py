"""``Runner`` (blocking) and ``AsyncRunner`` (asyncio): run local Python code on Flame.

::

    with Runner("demo") as rr:
        add = rr.service(lambda a, b: a + b)
        print(add(1, 2).get())

The sync Runner runs its core on flamepy's one background loop.  A call is
posted there (one wake-up per burst of calls) and admitted by a plain callback,
so 100,000 futures in flight need no thread, task or future each.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Generic, TypeVar

from flamepy import _progress as progress
from flamepy._errors import FlameTimeoutError, InvalidArgumentError
from flamepy._loop import BackgroundLoop, background_loop
from flamepy._types import ResourceRequirement
from flamepy.core.cache import ObjectRef
from flamepy.runner._controls import CallControls
from flamepy.runner._core import RunnerCore, ServiceCore
from flamepy.runner._future import (
    AsyncObjectFuture,
    ObjectFuture,
    as_completed,
    get_all,
    wait_all,
)
from flamepy.runner._map import DEFAULT_MAX_IN_FLIGHT, AsyncMapIterator, MapIterator, check_bound
from flamepy.runner._package import DEFAULT_SIZE_BUDGET
from flamepy.runner._publish import PackagePreview
from flamepy.runner.types import is_function

RetryOn = type[BaseException] | Sequence[type[BaseException]]

FutureT = TypeVar("FutureT", ObjectFuture, AsyncObjectFuture)
T = TypeVar("T")


class _Method(Generic[FutureT]):
    __slots__ = ("_name", "_service")
    _service: _ServiceFront[FutureT]
    _name: str | None

    def __init__(self, service: _ServiceFront[FutureT], name: str | None) -> None:
        self._service = service
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> FutureT:
        return self._service._submit(self._name, args, kwargs)


class _ServiceFront(Generic[FutureT]):
    """What both service flavours share: one attribute per public method."""

    def __init__(self, name: str, core: ServiceCore) -> None:
        self._name = name
        self._core = core
        for method in core.methods:
            setattr(self, method, _Method(self, method))

    @property
    def session_id(self) -> str:
        return self._core.session_id

    @property
    def methods(self) -> list[str]:
        return list(self._core.methods)

    @property
    def _ref_prefix(self) -> str:
        return f"{self._name}/{self._core.session_id}"

    def _submit(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> FutureT:
        raise NotImplementedError

    @property
    def retries(self) -> int:
        """How many times a call is sent again (see ``Runner.service``)."""
        return self._core.controls.retries

    @property
    def timeout(self) -> float | None:
        """Seconds a call may take (see ``Runner.service``)."""
        return self._core.controls.timeout

    def __call__(self, *args: Any, **kwargs: Any) -> FutureT:
        if not self._core.is_function:
            raise TypeError(
                f"this service wraps an object; call one of its methods: {self._core.methods}"
            )
        return self._submit(None, args, kwargs)


async def _after_posted(loop: BackgroundLoop, closing: Coroutine[Any, Any, object]) -> None:
    """``closing``, once the calls posted before it came in (so it waits for them)."""
    loop.run_posted()
    await closing


class RunnerService(_ServiceFront[ObjectFuture]):
    """A remote function, class or object: each public method returns a future."""

    def __init__(self, runner: Runner, core: ServiceCore) -> None:
        super().__init__(runner.name, core)
        self._runner = runner

    def _submit(
        self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> ObjectFuture:
        loop = self._runner._loop
        core = self._core
        call = core.new_call(method, args, kwargs)
        loop.post(core.admission.start, call)
        return ObjectFuture(call, loop, self._ref_prefix, core)

    def close(self) -> None:
        self._runner._loop.run(_after_posted(self._runner._loop, self._core.close()))


log = logging.getLogger("flamepy.runner")

INTERRUPT_WAIT = 2.0
"""Seconds a Runner left by Ctrl-C gives its cleanup."""


class _RunnerFront:
    """What both Runner flavours share: their options and the core they build.

    ``name`` names the application: each Runner registers its own, named
    ``<name>-<8 hex digits>`` (:attr:`application`), so that two programs that chose
    the same name never run each other's code; ``fail_if_exists`` refuses to start
    beside another Runner of that name instead.  Options:
    ``dependencies`` (pip requirement strings), ``python_version``,
    ``excludes`` (gitignore patterns), ``storage`` (package storage URL),
    ``template`` (the application to clone), ``root`` (the directory to package),
    ``size_budget`` (bytes), ``index_settings`` (``UV_INDEX_URL``,
    ``UV_EXTRA_INDEX_URL``, ``PIP_INDEX_URL``, ... for the executor's installer;
    they are part of the application's spec, so anyone who can list applications
    sees them: keep credentials in the cluster's environment), ``dry_run``
    (package and report what the package holds and declares, :attr:`preview`,
    without reaching a cluster) and ``local_capacity`` (how many instances the
    embedded local cluster runs at once, when this Runner starts it: no endpoint
    is configured and no embedded cluster runs yet in this program; it wins over
    ``FLAME_LOCAL_CAPACITY`` and flame.yaml's ``local.capacity``.  Otherwise it
    is ignored, with a :class:`~flamepy.ConfigWarning` that says why), and
    ``output`` (show what remote code prints and logs here, prefixed with the
    service and the instance's pid; on unless ``False`` or ``FLAME_OUTPUT=0``).
    """

    def __init__(
        self,
        name: str,
        fail_if_exists: bool = False,
        dependencies: list[str] | None = None,
        python_version: str | None = None,
        *,
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
        self.name = name
        self._core = RunnerCore(
            name,
            fail_if_exists=fail_if_exists,
            dependencies=dependencies,
            python_version=python_version,
            excludes=excludes,
            storage=storage,
            template=template,
            root=root,
            size_budget=size_budget,
            index_settings=index_settings,
            dry_run=dry_run,
            local_capacity=local_capacity,
            output=output,
        )
        self._start()

    def _start(self) -> None:
        raise NotImplementedError

    @property
    def application(self) -> str:
        """The name of the application this Runner registered (``<name>-<suffix>``)."""
        return self._core.name

    @property
    def package_url(self) -> str | None:
        return self._core.package_url

    @property
    def package_uploaded(self) -> bool:
        """Whether this Runner uploaded its package (False: storage had it)."""
        return self._core.package_uploaded

    @property
    def preview(self) -> PackagePreview | None:
        """What the package holds and which dependencies it declares (set by
        ``dry_run=True``; ``str()`` of it is a readable summary)."""
        return self._core.preview

    @property
    def package_built(self) -> bool:
        """Whether this Runner built its package (False: the tree is unchanged since a
        build that the package index remembers, and storage had that package)."""
        package = self._core.package
        return package is not None and package.path is not None


class Runner(_RunnerFront):
    """Package the working directory, register it on Flame and run code there
    (the options are described on the base class).

    The sync Runner sets the application up as it is created.
    """

    def _start(self) -> None:
        self._loop = background_loop()
        self._loop.run(self._core.setup())
        self._closed = False

    def service(
        self,
        execution_object: Any,
        autoscale: bool | None = None,
        warmup: int = 0,
        resreq: ResourceRequirement | None = None,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        retries: int = 0,
        retry_on: RetryOn = (),
        timeout: float | None = None,
    ) -> RunnerService:
        """Run a function, a class (``args``/``kwargs`` go to its constructor on the
        executor) or an object instance remotely; its session opens now.

        ``retries``: how many more times a call is sent when its instance was lost
        (the process died or was killed while running it) or when it raised one of
        the exception types ``retry_on``; the last failure is raised.  A retried
        call of a stateful service runs after the calls already sent.
        ``timeout``: seconds each call may take from the moment it is made (queueing
        and retries count); a call not finished by then fails with
        :class:`~flamepy.FlameTimeoutError` naming it.  Flame cannot cancel a task
        that runs: such a call is abandoned, runs to its end on the cluster, and its
        result is ignored (a call not sent yet is not sent)."""
        controls = CallControls.of(retries, retry_on, timeout)
        core = self._core.new_service(
            execution_object, autoscale, warmup, resreq, args, kwargs, controls
        )
        self._loop.run(core.session())
        return RunnerService(self, core)

    def map(
        self,
        target: Any,
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> MapIterator:
        """Call ``target`` on each item (on items of several iterables taken
        together, as ``zip`` does) and iterate over the values, in input order, as
        ``concurrent.futures.Executor.map`` does.

        ``target`` is a function, for which a service is made (and closed once every
        value was taken), or a call of an existing service of this Runner: a method
        (``rr.map(svc.method, items)``) or a function service (``rr.map(svc,
        items)``), whose options (``retries``, ``timeout``, ...) apply.  At most
        ``max_in_flight`` calls are made and not yet taken: the iterable is drawn
        lazily, and the first ``max_in_flight`` calls are made at once.  A failing
        call raises its exception when its value is reached; the calls still in
        flight are then cancelled where they can be (those not sent yet)."""
        bound = check_bound(max_in_flight)
        submit, owned = _map_target(self, target, self.service)
        on_done = owned.close if owned is not None else None
        return MapIterator(submit, zip(iterable, *iterables, strict=False), bound, on_done)

    def get(self, futures: Sequence[ObjectFuture], timeout: float | None = None) -> list[Any]:
        """The values of ``futures``, within ``timeout`` seconds in all; raises the
        first failure (in list order) as soon as a call failed."""
        return get_all(futures, timeout)

    def ref(self, futures: Sequence[ObjectFuture], timeout: float | None = None) -> list[ObjectRef]:
        return [f.ref(timeout) for f in futures]

    def wait(self, futures: Sequence[ObjectFuture], timeout: float | None = None) -> None:
        """Block until every call finished, within ``timeout`` seconds in all."""
        wait_all(futures, timeout)

    def select(
        self, futures: Sequence[ObjectFuture], timeout: float | None = None
    ) -> Iterator[ObjectFuture]:
        """The futures in the order their calls finish."""
        return as_completed(futures, timeout)

    def put_object(self, obj: Any) -> ObjectRef:
        """Store ``obj`` under ``<app>/shared``; pass the ref to calls."""
        return self._loop.run(self._core.put_object(obj))  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.run(_after_posted(self._loop, self._core.close()))

    def interrupt(self) -> None:
        """Leave at once: what has not finished fails with TaskCancelledError, the
        sessions close without waiting, and cleanup gets at most INTERRUPT_WAIT s.
        A task already running on the cluster is left to finish (one line says so)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._core.interrupt(), timeout=INTERRUPT_WAIT)
        except FlameTimeoutError:
            log.warning("interrupted: cleanup did not finish within %ss", INTERRUPT_WAIT)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and not issubclass(kind, Exception):
            self.interrupt()  # KeyboardInterrupt, SystemExit: nothing is waited for
        else:
            self.close()


FlameRunner = Runner


class AsyncRunnerService(_ServiceFront[AsyncObjectFuture]):
    """The asyncio flavour of :class:`RunnerService`; ``await service`` waits for its
    session, and each call returns an :class:`AsyncObjectFuture`."""

    def __init__(self, runner: AsyncRunner, core: ServiceCore) -> None:
        super().__init__(runner.name, core)
        self._runner = runner

    def _submit(
        self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncObjectFuture:
        call = self._core.new_call(method, args, kwargs)
        task = asyncio.ensure_future(self._core.admission.call(call))
        return AsyncObjectFuture(task, self._ref_prefix, call)

    async def wait_ready(self) -> AsyncRunnerService:
        await self._core.session()
        return self

    def __await__(self) -> Any:
        return self.wait_ready().__await__()

    async def close(self) -> None:
        await self._core.close()


class AsyncRunner(_RunnerFront):
    """The asyncio Runner: ``async with AsyncRunner("name") as rr: ...``; the
    application is set up when the block is entered (or by :meth:`open`)."""

    def _start(self) -> None:
        self._opened = False

    async def open(self) -> AsyncRunner:
        if not self._opened:
            await self._core.setup()
            self._opened = True
        return self

    def service(
        self,
        execution_object: Any,
        autoscale: bool | None = None,
        warmup: int = 0,
        resreq: ResourceRequirement | None = None,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        retries: int = 0,
        retry_on: RetryOn = (),
        timeout: float | None = None,
    ) -> AsyncRunnerService:
        """Like :meth:`Runner.service`; the session opens in the background."""
        controls = CallControls.of(retries, retry_on, timeout)
        core = self._core.new_service(
            execution_object, autoscale, warmup, resreq, args, kwargs, controls
        )
        return AsyncRunnerService(self, core)

    def map(
        self,
        target: Any,
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> AsyncMapIterator:
        """Like :meth:`Runner.map`, as an async iterator (``async for v in
        rr.map(fn, items)``); call it in a coroutine: the first calls are made at
        once.  ``iterable`` is a plain (not an async) iterable."""
        bound = check_bound(max_in_flight)
        submit, owned = _map_target(self, target, self.service)
        on_done = owned.close if owned is not None else None
        return AsyncMapIterator(submit, zip(iterable, *iterables, strict=False), bound, on_done)

    async def get(
        self, futures: Sequence[AsyncObjectFuture], timeout: float | None = None
    ) -> list[Any]:
        return await _gather_shown([f.get(timeout) for f in futures])

    async def ref(
        self, futures: Sequence[AsyncObjectFuture], timeout: float | None = None
    ) -> list[ObjectRef]:
        return await _gather_shown([f.ref(timeout) for f in futures])

    async def wait(
        self, futures: Sequence[AsyncObjectFuture], timeout: float | None = None
    ) -> None:
        await _gather_shown([f.wait(timeout) for f in futures])

    async def select(
        self, futures: Sequence[AsyncObjectFuture]
    ) -> AsyncIterator[AsyncObjectFuture]:
        """The futures in the order their calls finish."""
        by_task = {f._task: f for f in futures}
        pending = set(by_task)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield by_task[task]

    async def put_object(self, obj: Any) -> ObjectRef:
        return await self._core.put_object(obj)  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._core.close()

    async def __aenter__(self) -> AsyncRunner:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


FlameAsyncRunner = AsyncRunner


def _map_target(
    runner: _RunnerFront, target: Any, make_service: Callable[[Any], Any]
) -> tuple[Callable[..., Any], Any]:
    """What ``map`` calls for each item, and the service it made for it (or None)."""
    service = target._service if isinstance(target, _Method) else target
    if isinstance(service, _ServiceFront):
        if getattr(service, "_runner", None) is not runner:
            raise InvalidArgumentError("map takes a service of the same Runner")
        if not isinstance(target, _Method) and not service._core.is_function:
            raise TypeError(
                "map over a service that wraps a class or an object takes one of its "
                f"methods (rr.map(svc.method, items)): {service.methods}"
            )
        return target, None
    if not is_function(target):
        raise TypeError(
            f"map takes a function or a service's method, not {type(target).__name__}; "
            "for a class, make a service and map one of its methods"
        )
    owned = make_service(target)
    return owned, owned


async def _gather_shown(waits: list[Coroutine[Any, Any, T]]) -> list[T]:
    """``asyncio.gather``, with a progress bar on a terminal for many calls (as the
    blocking Runner's ``get`` and ``wait``)."""
    shown = progress.bar(len(waits), "flame calls", "call", minimum=progress.MIN_CALLS)
    if shown is None:
        return list(await asyncio.gather(*waits))
    tasks = [asyncio.ensure_future(w) for w in waits]
    for task in tasks:
        task.add_done_callback(lambda _: shown.add(1))
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        shown.close()
