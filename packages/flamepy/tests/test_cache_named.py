"""Same-host reads and actions without a round trip.

Two things make a large argument cheap on the embedded cluster: a reader that
holds an ObjectRef maps the object's file by the name it has while that version
is current (``object_file``), without asking the server; and the cache's
actions from the program that runs the cache server call the server directly
(``_cache.inproc``).  Real servers, real files; a spy on the server's
``do_action`` only records what reached it, and how.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _cache_helpers import pooled as _pooled
from _cache_helpers import use as _use

from flame_testkit import ClusterThread, LocalClusterConfig
from flame_testkit._cache_server import CacheServer
from flamepy._cache import client as _cache_client
from flamepy._cache import inproc as _cache_inproc
from flamepy._cache.client import CacheClient, flight_location
from flamepy._cache.local import LOCAL_MIN_BYTES, RECYCLE_MIN_BYTES, object_file
from flamepy._errors import InvalidArgumentError, NotFoundError
from flamepy.core import cache

BIG = LOCAL_MIN_BYTES * 4


@pytest.fixture
def server() -> Iterator[CacheServer]:
    srv = CacheServer(port=0, local_transfer=True, compression=None)
    srv.start()
    yield srv
    _cache_inproc.unregister(srv.endpoint)
    srv.stop()


@pytest.fixture(autouse=True)
def _clients() -> Iterator[None]:
    yield
    _cache_client.reset_clients()


def _spy(server: CacheServer, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(action type, whether it came over Flight) of each action the server ran."""
    seen: list[tuple[str, bool]] = []
    flight_server = server.flight_server
    real = type(flight_server).do_action

    def do_action(context: Any, action: Any) -> Any:
        seen.append((action.type, context is not None))
        return real(flight_server, context, action)

    monkeypatch.setattr(flight_server, "do_action", do_action)
    return seen


def _named(server: CacheServer, key: str, version: int) -> bool:
    assert server.local_dir is not None
    return (Path(server.local_dir) / object_file(key, version)).is_file()


def test_an_objects_file_has_its_name_exactly_while_that_version_is_current(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(server, monkeypatch)
    ref = cache.put_object("app/ssn", os.urandom(BIG))
    assert ref.version == 1 and _named(server, ref.key, 1)
    newer = cache.update_object(ref, os.urandom(BIG))
    assert newer.version == 2
    assert not _named(server, ref.key, 1) and _named(server, ref.key, 2)
    patched = cache.patch_object(newer, b"delta")  # the file no longer holds it all
    assert not _named(server, ref.key, 2) and not _named(server, ref.key, patched.version)
    base, patches = cache.get_object(newer, lambda b, p: (b, p))
    assert len(base) == BIG and patches == [b"delta"]
    other = cache.put_object("app/ssn", os.urandom(BIG))
    cache.delete_objects(other.key)
    assert not _named(server, other.key, 1)


def test_an_evicted_objects_name_goes_with_it() -> None:
    srv = CacheServer(port=0, local_transfer=True, max_memory=BIG * 2)
    srv.start()
    try:
        client = CacheClient(srv.endpoint)
        first = client.put("app/ssn", os.urandom(BIG))
        assert _named(srv, first[1], 1)
        for _ in range(2):
            client.put("app/ssn", os.urandom(BIG))
        assert not _named(srv, first[1], 1)
        with pytest.raises(NotFoundError):
            CacheClient(srv.endpoint).get(first[1], version=1)
        client.close()
    finally:
        srv.stop()


def test_a_reader_with_the_current_version_maps_the_file_without_asking(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = os.urandom(BIG)
    array = np.arange(BIG // 8, dtype=np.float64)
    writer = CacheClient(server.endpoint)
    key, version = writer.put("app/ssn", value)[1:]
    array_key = writer.put("app/ssn", array)[1]
    reader = CacheClient(server.endpoint)  # another client: no local copy
    assert reader.transfer_dir() is not None
    seen = _spy(server, monkeypatch)
    assert reader.get(key, version=version) == value
    assert np.array_equal(reader.get(array_key, version=1), array)
    assert reader.get(key, version=version) == value  # mapped again, still current
    assert seen == []
    writer.put(key, b"replaced" * 100_000)  # version 2: the reader's name is gone
    assert reader.get(key, version=version) == b"replaced" * 100_000
    assert reader.get(key) == b"replaced" * 100_000  # no version: asks, as before
    assert [kind for kind, _ in seen] == ["LOCAL_PUT", "LOCAL_GET", "LOCAL_GET"]
    writer.close()
    reader.close()


def test_actions_of_a_server_in_this_process_skip_flight(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _spy(server, monkeypatch)
    client = CacheClient(server.endpoint)
    over_flight = _bad_put_error(client)
    _cache_inproc.register(flight_location(server.endpoint), server.flight_server)
    seen.clear()
    key = client.put("app/ssn", np.ones(BIG // 8))[1]
    assert CacheClient(server.endpoint).get(key).sum() == BIG // 8  # LOCAL_DIR, LOCAL_GET
    client.delete(key)
    with pytest.raises(NotFoundError):
        client.get(key)
    in_process = _bad_put_error(client)
    assert over_flight == in_process  # the same error, the same message
    assert seen and not any(came_over_flight for _, came_over_flight in seen)
    assert {"LOCAL_DIR", "LOCAL_PUT", "LOCAL_GET", "DELETE"} <= {kind for kind, _ in seen}
    _cache_inproc.unregister(flight_location(server.endpoint))
    seen.clear()
    client.delete("app/ssn")
    assert seen == [("DELETE", True)]
    client.close()


def _bad_put_error(client: CacheClient) -> tuple[type[Exception], str]:
    with pytest.raises(InvalidArgumentError) as info:
        client._call("put", lambda: client._action("LOCAL_PUT", {"target": "app/s", "file": "x"}))
    return type(info.value), str(info.value)


def test_no_client_keeps_a_mapping_that_would_pin_a_dropped_objects_file(
    server: CacheServer,
) -> None:
    # A writer and two readers (by ObjectRef and by key), each with its own local
    # cache: once the value read is gone and the object deleted, the next write
    # reuses the file (same inode).  A mapping kept in a local cache would make
    # the lease fail, and every later write would take fresh memory.
    size = 2 * RECYCLE_MIN_BYTES
    writer = CacheClient(server.endpoint)
    by_ref, by_key = CacheClient(server.endpoint), CacheClient(server.endpoint)
    assert server.local_dir is not None
    inodes = []
    for round in range(3):
        array = np.full(size // 8, float(round))
        key = writer.put("app/ssn", array)[1]
        inodes.append((Path(server.local_dir) / object_file(key, 1)).stat().st_ino)
        assert np.array_equal(by_ref.get(key, version=1), array)
        assert np.array_equal(by_key.get(key), array)
        writer.delete(key)
    assert inodes[1] == inodes[0] and inodes[2] == inodes[0]
    for client in (writer, by_ref, by_key):
        client.close()


def test_the_embedded_cluster_registers_its_cache_while_it_runs() -> None:
    config = LocalClusterConfig(in_process=True, cache_local_transfer=True, delay_release=1)
    with ClusterThread(config) as cluster:
        assert cluster.cache_endpoint is not None
        location = flight_location(cluster.cache_endpoint)
        assert _cache_inproc.lookup(location) is not None
    assert _cache_inproc.lookup(location) is None
    assert cluster.leftover_processes() == []


def test_an_in_process_cache_deletes_one_object_at_once(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(server, monkeypatch)
    threads: list[int] = []
    real = CacheClient.delete

    def spy(self: CacheClient, key: str) -> None:
        threads.append(threading.get_ident())
        real(self, key)

    monkeypatch.setattr(CacheClient, "delete", spy)
    _cache_inproc.register(flight_location(server.endpoint), server.flight_server)
    ref = cache.put_object("app/ssn", os.urandom(2 * RECYCLE_MIN_BYTES))
    asyncio.run(cache.delete_objects_async(ref.key))
    assert threads == [threading.get_ident()]  # on the loop's own thread: no hop
    assert not _named(server, ref.key, 1) and len(_pooled(server)) == 1
    asyncio.run(cache.delete_objects_async("app/ssn"))  # a prefix: in the pool's threads
    assert len(threads) == 2 and threads[1] != threading.get_ident()
    _cache_inproc.unregister(flight_location(server.endpoint))
    other = cache.put_object("app/ssn", os.urandom(BIG))
    asyncio.run(cache.delete_objects_async(other.key))  # over Flight: in the pool's threads
    assert len(threads) == 3 and threads[2] != threading.get_ident()
