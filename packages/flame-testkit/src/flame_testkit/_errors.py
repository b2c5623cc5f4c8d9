"""Errors a local cluster raises to its user.

The hierarchy::

    LocalClusterError          base of what flame-testkit raises to callers
    └── ClusterConfigError     the cluster was asked for something it will not do
                               (also a ValueError): a work dir of another account,
                               TLS without TCP, ...

Errors inside the fake servers (``_state.StateError``, ``_cache_store.CacheError``)
are mapped to gRPC and Flight statuses where they are raised and never reach a
caller as such.
"""

from __future__ import annotations


class LocalClusterError(Exception):
    """Base class of flame-testkit's errors."""


class ClusterConfigError(LocalClusterError, ValueError):
    """The cluster's configuration is refused; the message says how to fix it."""


__all__ = ["ClusterConfigError", "LocalClusterError"]
