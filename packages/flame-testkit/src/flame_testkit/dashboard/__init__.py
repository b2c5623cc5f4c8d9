"""The local cluster's dashboard: applications, sessions, tasks, instances, logs and
the cache, live in a browser (``flame-local up --dashboard``, ``FLAME_DASHBOARD=1``).

It needs aiohttp: ``pip install 'flame-testkit[dashboard]'``.  :func:`start_dashboard`
says so when it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flame_testkit._errors import ClusterConfigError

if TYPE_CHECKING:
    from flame_testkit._cluster import LocalCluster
    from flame_testkit.dashboard._server import Dashboard

DASHBOARD_ENV = "FLAME_DASHBOARD"
"""``1`` starts the dashboard with the embedded local cluster."""
NEEDS = "the dashboard needs aiohttp: pip install 'flame-testkit[dashboard]'"


async def start_dashboard(cluster: LocalCluster, port: int = 0) -> Dashboard:
    """Serve ``cluster``'s dashboard on 127.0.0.1:``port``; see ``Dashboard.url``."""
    try:
        from flame_testkit.dashboard._server import Dashboard
    except ImportError as exc:
        raise ClusterConfigError(f"{NEEDS} ({exc})") from exc
    dashboard = Dashboard(cluster, port=port)
    await dashboard.start()
    return dashboard


__all__ = ["DASHBOARD_ENV", "start_dashboard"]
