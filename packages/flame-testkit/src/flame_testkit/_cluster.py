"""A local Flame cluster: session manager plus executor manager in one process.

:class:`LocalCluster` is the asyncio object; :class:`ClusterThread` runs one on its
own event loop in a daemon thread, for synchronous callers (the pytest plugin,
the embedded default of flamepy, ``flame-local run``).

A cluster is its owner's alone (``_auth``): by default the Frontend and the cache
listen on Unix sockets in an owner-only runtime directory; on TCP (``host`` or
``port`` set) every request must carry a token, unless ``no_auth`` says otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flame_testkit._auth import (
    TOKEN_FILE_NAME,
    new_token,
    owner_only_dir,
    runtime_dir,
    write_token_file,
)
from flame_testkit._auth import work_dir as own_work_dir
from flame_testkit._cache_server import (
    DEFAULT_MAX_UPLOADS,
    DEFAULT_UPLOAD_WAIT,
    REPLY_COMPRESSION,
    CacheServer,
)
from flame_testkit._cache_store import DEFAULT_MAX_MEMORY, DEFAULT_MAX_OBJECT_BYTES
from flame_testkit._errors import ClusterConfigError
from flame_testkit._executor import (
    DEFAULT_CAPACITY,
    DEFAULT_KILL_GRACE,
    DEFAULT_SOCKET_TIMEOUT,
    DEFAULT_TASK_STREAM,
    ExecutorManager,
    ExecutorManagerConfig,
)
from flame_testkit._launch import group_alive
from flame_testkit._reaper import LeaseReaper
from flame_testkit._server import DEFAULT_HOST, FrontendServer
from flame_testkit._servicer import FrontendOptions, FrontendServicer
from flame_testkit._state import DEFAULT_RETRY_LIMIT, ClusterState
from flame_testkit._task_archive import TaskArchive
from flame_testkit.dashboard import start_dashboard
from flamepy import _inproc as inproc
from flamepy._cache import inproc as cache_inproc
from flamepy._config import (
    FLAME_CA_FILE,
    FLAME_CACHE_ENDPOINT,
    FLAME_ENDPOINT,
    FLAME_TOKEN,
    FLAME_TOKEN_FILE,
)
from flamepy.proto import types_pb2

if TYPE_CHECKING:
    from flame_testkit.dashboard._server import Dashboard

log = logging.getLogger("flame_testkit.cluster")
T = TypeVar("T")

FLMRUN_APP = "flmrun"
PING_APP = "flmping"
EXEC_APP = "flmexec"
TEST_APP = "flmtest"
FLMRUN_DESCRIPTION = "The Flame Runner application for executing customized Python applications."
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class LocalClusterConfig:
    host: str | None = None
    """The TCP address to serve on; None (with ``port`` 0) serves on Unix sockets in
    an owner-only runtime directory, the default."""
    port: int = 0
    """The Frontend's TCP port (0: a free one); a non-zero port alone means TCP on
    127.0.0.1."""
    capacity: int = DEFAULT_CAPACITY
    work_dir: Path | None = None
    """Where instances run and logs go (made 0700; another account's is refused); a
    new temporary directory when None."""
    retry_limit: int = DEFAULT_RETRY_LIMIT
    watch_events: bool = False
    default_apps: bool = True
    """Register what a real cluster registers at start: flmexec, flmping, flmrun (A5)."""
    test_app: bool = False
    """Also register ``flmtest`` (``_testapp``), the test application of flame-testkit's
    own tests; no real cluster has it."""
    delay_release: int | None = None
    """Idle release delay (seconds) for the default applications; server default when None."""
    kill_grace: float = DEFAULT_KILL_GRACE
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
    python: str = field(default_factory=lambda: sys.executable)
    cache: bool = True
    """Start an object cache (Arrow Flight) with the cluster."""
    cache_storage: str | None = None
    """Cache persistence: None (memory only), a directory, or fs:// / file:// URL."""
    cache_max_memory: int | None = None
    cache_spill: bool = True
    """Without ``cache_storage``: write objects evicted from memory to the work dir
    and read them back, instead of dropping what a client may still read."""
    cache_compression: str | None = REPLY_COMPRESSION
    """Of the cache's reply bodies on TCP: ``"zstd"`` as Flame's cache, or None
    (plain).  A cluster on Unix sockets sends them plain: its clients are local."""
    cache_local_transfer: bool = False
    """Let clients on this host hand payloads over as files on /dev/shm."""
    cache_max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    """The largest object or native table the cache accepts (INVALID_ARGUMENT beyond)."""
    cache_max_uploads: int = DEFAULT_MAX_UPLOADS
    """Uploads served at once; more wait ``cache_upload_wait`` seconds, then fail."""
    cache_upload_wait: float = DEFAULT_UPLOAD_WAIT
    cache_transfer_dir: str | None = None
    """Where the same-host transfer directory goes: None is
    ``$FLAME_LOCAL_TRANSFER_DIR``, else /dev/shm."""
    tls_cert: Path | None = None
    """PEM certificate chain: serve the Frontend (``https://``) and the cache
    (``grpc+tls://``) over TLS with ``tls_key``; TCP only."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """The CA bundle instances trust (FLAME_CA_FILE); ``tls_cert`` when None."""
    token: str | None = None
    """TCP only: the access token every request must carry; a new random one when
    None (see :attr:`LocalCluster.token_file`)."""
    no_auth: bool = False
    """TCP only: accept requests without a token.  Anyone who can reach the port can
    then run commands as this account: only for a peer that cannot send one."""
    in_process: bool = False
    """Also serve flamepy connections made in this process directly, without gRPC
    (the embedded default does; tests keep to real sockets)."""
    task_stream: bool = DEFAULT_TASK_STREAM
    """Offer instances flmrun's task stream for their tasks (``flmrun._stream``);
    False keeps every Instance call on gRPC."""
    dashboard: bool = False
    """Serve the dashboard (``flame_testkit.dashboard``, needs aiohttp) on 127.0.0.1
    with a token; its address is :attr:`LocalCluster.dashboard_url`."""
    dashboard_port: int = 0
    """The dashboard's TCP port on 127.0.0.1 (0: a free one)."""

    def __post_init__(self) -> None:
        if self.tcp:
            if self.no_auth and self.token is not None:
                raise ClusterConfigError("give either a token or no_auth=True, not both")
            if (self.tls_cert is None) != (self.tls_key is None):
                raise ClusterConfigError("TLS needs both a certificate and its key")
            return
        for name in ("token", "tls_cert", "tls_key"):
            if getattr(self, name) is not None:
                raise ClusterConfigError(
                    f"{name} applies to a cluster served on TCP: set host (and port) too; "
                    "the default Unix sockets are owner-only without it"
                )
        if self.no_auth:
            raise ClusterConfigError(
                "no_auth applies to a cluster served on TCP: set host (and port) too"
            )

    @property
    def tcp(self) -> bool:
        """Whether the cluster is served on TCP rather than on Unix sockets."""
        return self.host is not None or self.port != 0

    @property
    def bind_host(self) -> str:
        return self.host if self.host is not None else DEFAULT_HOST


def default_applications(config: LocalClusterConfig) -> dict[str, types_pb2.ApplicationSpec]:
    """``flmrun`` (this workspace's runner, same interpreter), ``flmping`` and
    ``flmexec`` (``_apps``), and the test app when asked for."""
    flmrun = types_pb2.ApplicationSpec(
        description=FLMRUN_DESCRIPTION,
        command=config.python,
        arguments=["-m", "flmrun"],
        installer="python",
    )
    flmrun.schema.SetInParent()
    test = types_pb2.ApplicationSpec(
        description="Test application of flame-testkit: echo, fail, sleep, exit.",
        command=config.python,
        arguments=["-m", "flame_testkit._testapp"],
    )
    ping = types_pb2.ApplicationSpec(
        description="Flame's ping application: each task returns its input.",
        command=config.python,
        arguments=["-m", "flame_testkit._apps", "ping"],
    )
    execute = types_pb2.ApplicationSpec(
        description="Flame's exec application: runs a Python or shell script per task.",
        command=config.python,
        arguments=["-m", "flame_testkit._apps", "exec"],
    )
    execute.schema.input = json.dumps(
        {
            "type": "object",
            "properties": {
                "language": {"type": "string"},
                "code": {"type": "string"},
                "input": {"type": "array", "items": {"type": "integer"}},
            },
            "required": ["code"],
        }
    )
    execute.schema.output = json.dumps({"type": "string"})
    apps = {FLMRUN_APP: flmrun, PING_APP: ping, EXEC_APP: execute}
    if config.test_app:
        apps[TEST_APP] = test
    if config.delay_release is not None:
        for spec in apps.values():
            spec.delay_release = config.delay_release
    return apps


class LocalCluster:
    """Frontend + executor manager on the running event loop."""

    def __init__(self, config: LocalClusterConfig | None = None) -> None:
        self.config = config or LocalClusterConfig()
        self._own_work_dir = self.config.work_dir is None
        if self.config.work_dir is not None:
            self.work_dir = owner_only_dir(self.config.work_dir, "work directory")
        else:
            self.work_dir = own_work_dir()  # 0700, claimed; dead clusters' are swept
        # Finished tasks' payloads beyond the newest of each session go to disk.
        self.task_archive = TaskArchive(self.work_dir / f"tasks-{os.getpid()}-{id(self):x}")
        self.state = ClusterState(retry_limit=self.config.retry_limit, archive=self.task_archive)
        self.socket_dir = runtime_dir()
        self.logs_dir = self.work_dir / "logs"
        """Instances' stdout and stderr, ``<executor id>.out`` and ``.err``; linked from
        the runtime directory as ``logs``, which is how ``flmctl logs`` finds them."""
        self.logs_dir.mkdir(mode=0o700, exist_ok=True)
        (self.socket_dir / "logs").symlink_to(self.logs_dir, target_is_directory=True)
        self.executor_manager: ExecutorManager | None = None
        self.reaper: LeaseReaper | None = None
        self.server: FrontendServer | None = None
        self.cache_endpoint: str | None = None
        self.cache: CacheServer | None = None
        self.token: str | None = None
        """The access token of a TCP cluster (None on Unix sockets or with no_auth)."""
        self.token_file: Path | None = None
        """The 0600 file holding :attr:`token`."""
        self.dashboard: Dashboard | None = None
        if self.config.tcp and not self.config.no_auth:
            self.token = self.config.token or new_token()
            self.token_file = write_token_file(self.socket_dir / TOKEN_FILE_NAME, self.token)

    @staticmethod
    def check_work_dir(config: LocalClusterConfig) -> None:
        """Refuse (:class:`ClusterConfigError`) a work dir that is not this account's."""
        if config.work_dir is not None:
            owner_only_dir(config.work_dir, "work directory")

    @property
    def ca_file(self) -> str | None:
        """The CA bundle a client of this TLS cluster trusts (None without TLS)."""
        if self.config.tls_cert is None:
            return None
        return str(self.config.tls_ca or self.config.tls_cert)

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) set up to reach this cluster:
        its endpoints, its token file and CA, and no token meant for another one."""
        env = dict(os.environ if base is None else base)
        env[FLAME_ENDPOINT] = self.endpoint
        if self.cache_endpoint:
            env[FLAME_CACHE_ENDPOINT] = self.cache_endpoint
        env.pop(FLAME_TOKEN, None)
        env.pop(FLAME_TOKEN_FILE, None)
        if self.token_file is not None:
            env[FLAME_TOKEN_FILE] = str(self.token_file)
        if self.ca_file is not None:
            env[FLAME_CA_FILE] = self.ca_file
        return env

    @property
    def endpoint(self) -> str:
        if self.server is None:
            raise RuntimeError("the local cluster is not started")
        return self.server.endpoint

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's address with its token (None unless ``dashboard=True``)."""
        return self.dashboard.url if self.dashboard is not None else None

    @property
    def launched_pids(self) -> list[int]:
        return list(self.executor_manager.launched_pids) if self.executor_manager else []

    async def start(self) -> LocalCluster:
        if self.config.default_apps or self.config.test_app:
            for name, spec in default_applications(self.config).items():
                if not self.config.default_apps and name != TEST_APP:
                    continue
                self.state.register_application(name, spec)
        tls = None
        if self.config.tls_cert is not None and self.config.tls_key is not None:
            tls = (self.config.tls_cert.read_bytes(), self.config.tls_key.read_bytes())
        tcp = self.config.tcp
        if self.config.cache:
            self.cache = CacheServer(
                host=self.config.bind_host,
                port=0,
                storage=self.config.cache_storage,
                max_memory=self.config.cache_max_memory or DEFAULT_MAX_MEMORY,
                tls=tls,
                # On Unix sockets every client is on this machine: compressing costs
                # CPU and saves nothing.
                compression=self.config.cache_compression if tcp else None,
                local_transfer=self.config.cache_local_transfer,
                unix_path=None if tcp else str(self.socket_dir / "cache.sock"),
                token=self.token,
                spill=self.work_dir / "spill" if self.config.cache_spill else None,
                max_object_bytes=self.config.cache_max_object_bytes,
                max_uploads=self.config.cache_max_uploads,
                upload_wait=self.config.cache_upload_wait,
                transfer_parent=self.config.cache_transfer_dir,
            )
            # Its own thread, not the default pool: on the embedded cluster that pool is
            # shared with flamepy, whose threads may be waiting for this very start.
            with concurrent.futures.ThreadPoolExecutor(1, "flame-cache-start") as pool:
                await asyncio.get_running_loop().run_in_executor(pool, self.cache.start)
            self.cache_endpoint = self.cache.endpoint
            if self.config.in_process:
                cache_inproc.register(self.cache.endpoint, self.cache.flight_server)
        executors: list[ExecutorManager] = []
        servicer = FrontendServicer(
            self.state,
            options=FrontendOptions(watch_events=self.config.watch_events),
            executors=lambda: executors[0].executor_protos() if executors else [],
            nodes=lambda: executors[0].node_protos() if executors else [],
        )
        self.server = FrontendServer(
            servicer,
            self.config.bind_host,
            self.config.port,
            tls,
            unix_path=None if tcp else str(self.socket_dir / "frontend.sock"),
            token=self.token,
        )
        await self.server.start()
        if self.config.in_process:
            inproc.register(self.server.endpoint, servicer, asyncio.get_running_loop())
        manager = ExecutorManager(
            self.state,
            ExecutorManagerConfig(
                work_dir=self.work_dir,
                socket_dir=self.socket_dir,
                frontend_endpoint=self.server.endpoint,
                cache_endpoint=self.cache_endpoint,
                ca_file=self.ca_file,
                token_file=str(self.token_file) if self.token_file is not None else None,
                capacity=self.config.capacity,
                kill_grace=self.config.kill_grace,
                socket_timeout=self.config.socket_timeout,
                task_stream=self.config.task_stream,
            ),
        )
        executors.append(manager)
        self.executor_manager = manager
        await manager.start()
        cache = self.cache
        self.reaper = LeaseReaper(
            self.state, manager, cache.store.delete if cache is not None else None
        )
        await self.reaper.start()
        if self.config.dashboard:
            self.dashboard = await start_dashboard(self, self.config.dashboard_port)
        log.debug("local Flame cluster up: frontend %s", self.server.endpoint)
        return self

    async def stop(self) -> None:
        """Release every instance, then stop the servers.  Needs no new threads, so it
        also works from an atexit hook, after concurrent.futures has shut down."""
        try:
            if self.dashboard is not None:
                await self.dashboard.stop()
                self.dashboard = None
            if self.reaper is not None:
                await self.reaper.stop()
            if self.executor_manager is not None:
                await self.executor_manager.stop()
        finally:
            if self.server is not None:
                if self.config.in_process:
                    inproc.unregister(self.server.endpoint)
                await self.server.stop()
            if self.cache is not None:
                if self.config.in_process:
                    cache_inproc.unregister(self.cache.endpoint)
                self.cache.stop()  # brief; blocking the loop here is fine
                self.cache = None
            self.task_archive.close()
            shutil.rmtree(self.task_archive.directory, ignore_errors=True)
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)

    def leftover_processes(self) -> list[int]:
        """Process groups of launched instances that still have a live process."""
        return [pid for pid in self.launched_pids if group_alive(pid)]

    async def __aenter__(self) -> LocalCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ClusterThread:
    """Run a :class:`LocalCluster` on its own event loop in a daemon thread, or on
    ``loop``, an event loop already running in another thread (the embedded
    cluster shares flamepy's background loop, so in-process calls to it stay on
    one thread)."""

    def __init__(
        self,
        config: LocalClusterConfig | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.cluster = LocalCluster(config)
        self._own_loop = loop is None
        self._loop = loop if loop is not None else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="flame-local", daemon=True)
        self._started = False

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = START_TIMEOUT) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError(
                "a blocking call to the local cluster was made from its own event loop; "
                "await the LocalCluster's coroutines there instead"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def start(self) -> ClusterThread:
        if self._own_loop:
            self._thread.start()
        self._started = True  # from here on, stop() tears down whatever started
        try:
            self.call(self.cluster.start(), START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self._own_loop:
            if self._started and self._loop.is_running():
                self._started = False
                self.call(self.cluster.stop(), STOP_TIMEOUT)
            return
        if not self._thread.is_alive():
            return
        try:
            if self._started:
                self.call(self.cluster.stop(), STOP_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT)
            self._loop.close()

    @property
    def endpoint(self) -> str:
        return self.cluster.endpoint

    @property
    def cache_endpoint(self) -> str | None:
        return self.cluster.cache_endpoint

    @property
    def token(self) -> str | None:
        return self.cluster.token

    @property
    def token_file(self) -> Path | None:
        return self.cluster.token_file

    @property
    def dashboard_url(self) -> str | None:
        return self.cluster.dashboard_url

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return self.cluster.client_env(base)

    def leftover_processes(self) -> list[int]:
        return self.cluster.leftover_processes()

    def __enter__(self) -> ClusterThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
