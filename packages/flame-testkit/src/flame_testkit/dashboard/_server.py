"""The dashboard's HTTP server: aiohttp on the local cluster's own event loop.

Owner-only, as the rest of the local cluster: a browser needs TCP, so it binds
127.0.0.1 only and every request must carry the random token of its URL (query
``token``, or an ``X-Flame-Token`` header); without it the answer is 403.  The
Host header must name the loopback address it serves (a DNS-rebinding page gets
403 too), and pages are sent with a strict content security policy and no
referrer, so the token does not leave the page.

Routes: ``/`` (the page), ``/static/<file>``, and the JSON documents the page is a
view of: ``/api/summary``, ``/api/applications``, ``/api/sessions``,
``/api/sessions/<id>``, ``/api/instances``, ``/api/instances/<id>/log``,
``/api/cache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from flame_testkit.dashboard import _views as views

if TYPE_CHECKING:
    from flame_testkit._cluster import LocalCluster

log = logging.getLogger("flame_testkit.dashboard")

HOST = "127.0.0.1"
TOKEN_HEADER = "X-Flame-Token"
STATIC_FILES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(name: str) -> bytes:
    return resources.files("flame_testkit.dashboard").joinpath("static", name).read_bytes()


class Dashboard:
    """The dashboard of ``cluster``, served on 127.0.0.1 (``port`` 0: a free one)."""

    def __init__(self, cluster: LocalCluster, port: int = 0, token: str | None = None) -> None:
        self.cluster = cluster
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.sampler = views.Sampler()
        self._runner: web.AppRunner | None = None
        self._sampling: asyncio.Task[None] | None = None
        self._hosts: set[str] = set()

    @property
    def url(self) -> str:
        """The dashboard's address, with its token: what to open in a browser."""
        return f"http://{HOST}:{self.port}/?token={self.token}"

    async def start(self) -> str:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._file)
        app.router.add_get("/api/summary", self._json(lambda _: self._summary()))
        app.router.add_get("/api/applications", self._json(lambda _: self._apps()))
        app.router.add_get("/api/sessions", self._json(lambda _: views.sessions(self.cluster)))
        app.router.add_get("/api/sessions/{id}", self._json(self._session))
        app.router.add_get("/api/instances", self._json(lambda _: self._instances()))
        app.router.add_get("/api/instances/{id}/log", self._json(self._log))
        app.router.add_get("/api/cache", self._json(lambda _: views.cache_objects(self.cluster)))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self.port, reuse_address=False)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        self._sampling = asyncio.create_task(self._sample(), name="flame-dashboard-sampler")
        log.info("dashboard at http://%s:%d/", HOST, self.port)
        return self.url

    async def stop(self) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampling
            self._sampling = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _sample(self) -> None:
        while True:
            try:
                self.sampler.sample(self.cluster)
            except Exception:  # a view must never stop the cluster
                log.exception("dashboard sampling failed")
            await asyncio.sleep(views.SAMPLE_INTERVAL)

    # -- access ---------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.query.get("token") or request.headers.get(TOKEN_HEADER) or ""
        if request.host not in self._hosts:
            response: web.StreamResponse = web.Response(
                status=403, text="403: this dashboard answers on its loopback address only\n"
            )
        elif not hmac.compare_digest(given.encode(), self.token.encode()):
            response = web.Response(
                status=403,
                text="403: the dashboard needs its token: open the URL that "
                "'flame-local up --dashboard' printed (…/?token=…)\n",
            )
        else:
            response = await handler(request)
        response.headers.update(_HEADERS)
        return response

    # -- pages ----------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        html = _static("index.html").decode().replace("{{TOKEN}}", self.token)
        return web.Response(text=html, content_type="text/html")

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = STATIC_FILES.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=kind)

    def _json(self, build: Callable[[web.Request], Any]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            document = build(request)
            if document is None:
                raise web.HTTPNotFound(text="not found\n")
            return web.json_response(document)

        return handler

    def _summary(self) -> dict[str, Any]:
        return views.summary(self.cluster, self.sampler)

    def _apps(self) -> dict[str, Any]:
        return views.applications(self.cluster)

    def _instances(self) -> dict[str, Any]:
        return views.instances(self.cluster, self.sampler)

    def _session(self, request: web.Request) -> dict[str, Any] | None:
        return views.session_tasks(self.cluster, request.match_info["id"])

    def _log(self, request: web.Request) -> dict[str, Any] | None:
        return views.instance_log(self.cluster, request.match_info["id"])
