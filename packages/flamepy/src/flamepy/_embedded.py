"""The embedded default: a local cluster when no endpoint is configured.

When neither flame.yaml nor FLAME_ENDPOINT names a session manager and
flame-testkit is installed, a local cluster is started in-process for the life
of the program, and FLAME_ENDPOINT / FLAME_CACHE_ENDPOINT are set so that later
lookups (and child processes) use it.  Without the testkit the error says how to
configure an endpoint.
"""

from __future__ import annotations

import logging
import os
import warnings

from flamepy._config import FLAME_CACHE_ENDPOINT, FLAME_ENDPOINT, FlameContext
from flamepy._errors import ConfigError, ConfigWarning

log = logging.getLogger("flamepy.embedded")

NO_ENDPOINT = (
    "no Flame endpoint is configured: set FLAME_ENDPOINT (for example "
    "http://flame-session-manager:8080), or set cluster.endpoint of the current context in "
    "~/.flame/flame.yaml (or the file named by FLAME_CONFIG); to run on this machine "
    "without a cluster, install flame-testkit (pip install 'flamepy[local]')"
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


def resolve_endpoint(ctx: FlameContext) -> str:
    """The configured endpoint, or that of an embedded local cluster."""
    if ctx.configured_endpoint:
        return ctx.configured_endpoint
    try:
        from flame_testkit import embedded_cluster
    except ImportError:
        raise ConfigError(NO_ENDPOINT) from None
    cluster = embedded_cluster()
    os.environ[FLAME_ENDPOINT] = cluster.endpoint
    if cluster.cache_endpoint:
        os.environ[FLAME_CACHE_ENDPOINT] = cluster.cache_endpoint
    warnings.warn(
        f"no Flame endpoint is configured: running on an embedded local cluster "
        f"({cluster.endpoint}), which lives as long as this program; set FLAME_ENDPOINT or "
        "cluster.endpoint in ~/.flame/flame.yaml to use a real cluster",
        ConfigWarning,
        stacklevel=2,
    )
    log.debug("embedded local cluster at %s", cluster.endpoint)
    return cluster.endpoint
