"""Reaping what a killed client left on the local cluster.

A Runner sends its process identity (``flamepy._owner``) with the calls that
create its application and sessions.  When that process is gone (killed with
SIGKILL, or crashed before its cleanup), the :class:`LeaseReaper` closes its
sessions (pending tasks Cancelled, running ones Failed), stops their instances
at once, removes its applications and deletes their objects from the cache:
nothing waits for a client that will never come back.  Core-API clients send no
lease: what they create is meant to outlive them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from flame_testkit._executor import ExecutorManager
from flame_testkit._state import ClusterState
from flamepy._owner import alive

log = logging.getLogger("flame_testkit.reaper")

LEASE_CHECK_INTERVAL = 2.0
"""Seconds between two looks at the clients that own something."""
REAP_REASON = "its client process is gone (killed before it could clean up)"


class LeaseReaper:
    def __init__(
        self,
        state: ClusterState,
        manager: ExecutorManager,
        delete_objects: Callable[[str], object] | None,
        interval: float = LEASE_CHECK_INTERVAL,
    ) -> None:
        self.state = state
        self.manager = manager
        self.delete_objects = delete_objects
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="flame-lease-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # pragma: no cover - keep reaping whatever happens
                log.exception("reaping the leases of gone clients failed")

    def check(self) -> list[str]:
        """Reap every lease whose process is gone; returns those leases."""
        gone = [lease for lease in list(self.state.leases) if not alive(lease)]
        for lease in gone:
            closed, removed = self.state.reap(lease, f"session closed: {REAP_REASON}")
            for session_id in closed:
                self.manager.abandon(session_id)
            for app in removed:
                if self.delete_objects is not None:
                    try:
                        self.delete_objects(f"{app}/*")
                    except Exception as exc:  # the cache may be gone or refuse
                        log.warning("deleting the objects of %s failed: %s", app, exc)
            if closed or removed:
                log.warning(
                    "client process %s is gone: closed %d session(s), removed %s",
                    lease.partition(":")[0],
                    len(closed),
                    ", ".join(removed) or "no application",
                )
        return gone


__all__ = ["LEASE_CHECK_INTERVAL", "LeaseReaper"]
