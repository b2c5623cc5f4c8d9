"""Actions of an object cache served by this very program, called directly.

The embedded local cluster (flame-testkit) runs its object cache's Flight
server in the client's own process.  Flight actions from that process to that
server (``DELETE`` and the same-host transfer actions ``LOCAL_DIR``,
``LOCAL_PUT``, ``LOCAL_GET``) would each cross two gRPC stacks and the loopback
interface to reach a handler a few frames away: 1 to 2 ms per action here,
against tens of microseconds for the handler itself.  The cluster registers
its server under its endpoint, and a :class:`~flamepy._cache.client.CacheClient`
of that endpoint calls the server's ``do_action`` instead.  The bodies and
results are the very bytes that would travel (BSON in, result bodies out), and
the handler raises the Arrow errors the Flight client would raise for the
status it answers with, so the client's error mapping is the same either way.

Streams (DoPut, DoGet) still go through Flight: a same-host payload of any
size already travels as a file, and only small ones use those streams.
Processes other than the server's (flmrun instances) use Flight as always.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol

import pyarrow.flight as flight


class ActionServer(Protocol):
    """What a registered server offers: a Flight server's ``do_action``."""

    def do_action(self, context: Any, action: flight.Action) -> Iterable[flight.Result]: ...


_lock = threading.Lock()
_servers: dict[str, ActionServer] = {}


def register(location: str, server: ActionServer) -> None:
    """Serve actions sent in this process to ``location`` (a Flight location such
    as ``grpc://127.0.0.1:40123``) by calling ``server`` directly."""
    with _lock:
        _servers[location] = server


def unregister(location: str) -> None:
    with _lock:
        _servers.pop(location, None)


def lookup(location: str) -> ActionServer | None:
    """The server registered for ``location``, or None (then use Flight)."""
    with _lock:
        return _servers.get(location)


__all__ = ["ActionServer", "lookup", "register", "unregister"]
