"""The embedded default: a local cluster when no endpoint is configured.

When neither flame.yaml nor FLAME_ENDPOINT names a session manager and
flame-testkit is installed, a local cluster is started in-process for the life
of the program, and FLAME_ENDPOINT / FLAME_CACHE_ENDPOINT are set so that later
lookups (and child processes) use it.  Without the testkit the error says how to
configure an endpoint.

Its capacity (instances at once) is, first to be set: ``Runner(local_capacity=)``
(for the Runner that starts it), ``FLAME_LOCAL_CAPACITY``, ``local.capacity`` of
the current context in flame.yaml, the CPU count.  It is fixed once the cluster
runs: a Runner asking for another one later, or a Runner on a configured endpoint,
has its ``local_capacity`` ignored with a :class:`ConfigWarning`.
"""

from __future__ import annotations

import logging
import os
import warnings

from flamepy._config import FLAME_CACHE_ENDPOINT, FLAME_ENDPOINT, FlameContext
from flamepy._errors import ConfigError, ConfigWarning, InvalidArgumentError
from flamepy._hints import install_hint

log = logging.getLogger("flamepy.embedded")

NO_ENDPOINT = (
    "no Flame endpoint is configured: set FLAME_ENDPOINT (for example "
    "http://flame-session-manager:8080), or set cluster.endpoint of the current context in "
    "~/.flame/flame.yaml (or the file named by FLAME_CONFIG); to run on this machine "
    "without a cluster, install flame-testkit and flmrun next to flamepy: "
    + install_hint("flmrun", "flame-testkit")
)


def resolve_cache_endpoint(ctx: FlameContext) -> str:
    """The configured cache endpoint, or that of the embedded local cluster.

    The embedded cluster is used only when neither the Frontend nor the cache
    endpoint is configured; otherwise the spec's default applies.
    """
    if ctx.configured_cache_endpoint or ctx.configured_endpoint:
        return ctx.cache_endpoint
    resolve_endpoint(ctx)
    return os.environ.get(FLAME_CACHE_ENDPOINT) or ctx.cache_endpoint


FLAME_LOCAL_CAPACITY = "FLAME_LOCAL_CAPACITY"
_started: tuple[str, int] | None = None
"""The endpoint and capacity of the embedded cluster, once this program started it."""


def check_capacity(capacity: int | None) -> int | None:
    """``Runner(local_capacity=)``, checked: a whole number >= 1, or None."""
    if capacity is None:
        return None
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise InvalidArgumentError(
            f"local_capacity={capacity!r}: give the number of instances the embedded local "
            "cluster may run at once, a whole number of 1 or more"
        )
    return capacity


def _ignored(capacity: int, why: str) -> None:
    warnings.warn(f"local_capacity={capacity} is ignored: {why}", ConfigWarning, stacklevel=3)


def resolve_endpoint(ctx: FlameContext, local_capacity: int | None = None) -> str:
    """The configured endpoint, or that of an embedded local cluster; the embedded
    cluster's capacity comes from ``local_capacity`` (a Runner's option), else
    ``FLAME_LOCAL_CAPACITY``, else flame.yaml's ``local.capacity``."""
    global _started
    if ctx.configured_endpoint:
        if local_capacity is not None:
            if _started is not None and _started[0] == ctx.configured_endpoint:
                if _started[1] != local_capacity:
                    why = f"the embedded local cluster already runs, with capacity {_started[1]}"
                    _ignored(local_capacity, why)
            else:
                why = f"this program runs on {ctx.configured_endpoint}, not on an embedded cluster"
                _ignored(local_capacity, why)
        return ctx.configured_endpoint
    try:
        from flame_testkit import embedded_cluster
    except ImportError:
        raise ConfigError(NO_ENDPOINT) from None
    capacity = local_capacity
    if capacity is None and not (os.environ.get(FLAME_LOCAL_CAPACITY) or "").strip():
        capacity = ctx.local.capacity
    cluster = embedded_cluster(capacity)
    running = cluster.cluster.config.capacity
    first = _started is None or _started[0] != cluster.endpoint
    _started = (cluster.endpoint, running)
    if local_capacity is not None and running != local_capacity:
        why = f"the embedded local cluster already runs, with capacity {running}"
        _ignored(local_capacity, why)
    os.environ[FLAME_ENDPOINT] = cluster.endpoint
    if cluster.cache_endpoint:
        os.environ[FLAME_CACHE_ENDPOINT] = cluster.cache_endpoint
    if not first:  # said once, when this program started it
        return cluster.endpoint
    # Explicit: the Runner resolves its endpoint in a worker thread, where the caller's
    # frame would be concurrent.futures' (and the warning would quote its source line).
    warnings.warn_explicit(
        f"no Flame endpoint is configured: running on an embedded local cluster "
        f"({cluster.endpoint}), which lives as long as this program; set FLAME_ENDPOINT or "
        "cluster.endpoint in ~/.flame/flame.yaml to use a real cluster",
        ConfigWarning,
        filename="flamepy",
        lineno=0,
        module="flamepy",
    )
    log.debug("embedded local cluster at %s", cluster.endpoint)
    return cluster.endpoint
