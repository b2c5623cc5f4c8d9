"""Remote output on the client: what remote code prints and logs, shown here.

Each service's session gets an output *directory* in the cache
(``<app>/<session>/flame-output``), named to flmrun in the session's context
(``flame_output``).  flmrun sends its instance's stdout, stderr and user log
records there as patches (``flmrun._output`` has the layout).  One poller per
Runner reads the new patches and writes each line here, prefixed with the service
and the instance as Ray does: ``(square pid=4711) hello``.  stdout lines go to
``sys.stdout``; stderr and log lines go to ``sys.stderr``.

On by default; ``Runner(..., output=False)`` or ``FLAME_OUTPUT=0`` turns it off.
A cluster whose flmrun does not know the attribute (Flame's own) sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

from flamepy._cache.client import CacheClient
from flamepy._config import env_switch
from flamepy._errors import FlameError, NotFoundError

log = logging.getLogger("flamepy.runner.output")

OUTPUT_ENV = "FLAME_OUTPUT"
"""``0``/``false``/``off`` turns remote output off for every Runner of the process."""
OUTPUT_ID = "flame-output"
"""The id of a session's output directory object."""
POLL_FAST = 0.1
"""Seconds between reads while output is arriving."""
POLL_SLOW = 0.5
"""Seconds between reads once output has been quiet for a while."""
_QUIET_AFTER = 20
"""Empty reads after which the poller slows down."""


def output_enabled(option: bool | None) -> bool:
    """The Runner option if given, else ``FLAME_OUTPUT`` (default on)."""
    if option is not None:
        return option
    return env_switch(OUTPUT_ENV, default=True)


def directory_key(app: str, session_id: str) -> str:
    return f"{app}/{session_id}/{OUTPUT_ID}"


@dataclass
class _Source:
    key: str
    version: int = 0
    prefix: str = ""


@dataclass
class _Tail:
    """One session's output: its directory and the instance objects it names."""

    label: str
    directory: _Source
    sources: list[_Source] = field(default_factory=list)


class RemoteOutput:
    """Reads every session's output of one Runner and writes it here."""

    def __init__(
        self,
        client: CacheClient,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self._client = client
        self._stdout = stdout
        self._stderr = stderr
        self._tails: list[_Tail] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._host = socket.gethostname()
        self._warned = False
        self._reading = threading.Lock()

    def follow(self, label: str, directory: str) -> None:
        """Follow a session's output directory (once the client has put it)."""
        self._tails.append(_Tail(label, _Source(directory, version=1)))
        if self._task is None:
            self._task = asyncio.ensure_future(self._main())
        self._wake.set()

    async def _main(self) -> None:
        quiet = 0
        while True:
            delay = POLL_FAST if quiet < _QUIET_AFTER else POLL_SLOW
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            got = await asyncio.to_thread(self.read)
            quiet = 0 if got else quiet + 1

    async def close(self) -> None:
        """Read what is left (the calls have returned: their output was sent), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._tails:
            await asyncio.to_thread(self.read)
        self._tails.clear()

    # -- reading (in a worker thread) ------------------------------------------------------

    def read(self) -> int:
        """Read and write out every new line; returns how many.  One read at a time:
        a cancelled poll may still be running in its thread when ``close`` reads."""
        with self._reading:
            return self._read_all()

    def _read_all(self) -> int:
        shown = 0
        for tail in list(self._tails):
            try:
                shown += self._read_tail(tail)
            except (FlameError, OSError) as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("remote output of %s could not be read: %s", tail.label, exc)
        return shown

    def _read_tail(self, tail: _Tail) -> int:
        for value in self._patches(tail.directory):
            key = value.get("join") if isinstance(value, dict) else None
            if isinstance(key, str):
                tail.sources.append(_Source(key))
        shown = 0
        for source in list(tail.sources):
            shown += self._read_source(tail, source)
        return shown

    def _read_source(self, tail: _Tail, source: _Source) -> int:
        shown = 0
        following: str | None = None
        first = source.version == 0
        if first:  # one read: the header (the base) and the patches so far
            try:
                source.version, header, patches = self._client.patches_since(source.key, 0)
            except NotFoundError:
                return 0
            source.prefix = self._prefix(tail.label, header)
        else:
            patches = self._patches(source)
        for value in patches:
            if not isinstance(value, dict):
                continue
            if isinstance(value.get("next"), str):
                following = value["next"]
            for stream, text in value.get("lines", ()):
                self._write(stream, f"{source.prefix}{text}\n")
                shown += 1
        if following is not None:  # this object is complete: go on with the next
            after = _Source(following)
            tail.sources[tail.sources.index(source)] = after
            with contextlib.suppress(FlameError):  # the Runner deletes them at exit anyway
                self._client.delete(source.key)
            shown += self._read_source(tail, after)
        return shown

    def _patches(self, source: _Source) -> list[Any]:
        try:
            source.version, _, values = self._client.patches_since(source.key, source.version)
        except NotFoundError:
            return []
        return values

    def _prefix(self, label: str, header: Any) -> str:
        if not isinstance(header, dict):
            return f"({label}) "
        where = f"pid={header.get('pid')}"
        host = header.get("host")
        if host and host != self._host:
            where += f", host={host}"
        return f"({label} {where}) "

    def _write(self, stream: str, text: str) -> None:
        out = (self._stdout or sys.stdout) if stream == "stdout" else (self._stderr or sys.stderr)
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):
            pass
