"""Same-host transfers: payloads handed over as files in the cache's transfer directory.

Real cache servers (flame-testkit's, with ``local_transfer`` on and off), real
files on /dev/shm, and a raw Flight client to check that what went in as a file
is served unchanged to clients that keep to Flight (Flame's own SDK).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from _cache_helpers import eventually as _eventually
from _cache_helpers import objects as _objects
from _cache_helpers import pooled as _pooled
from _cache_helpers import use as _use
from _cache_helpers import user_module

from flame_testkit._cache_local import LocalTransfer
from flame_testkit._cache_server import CacheServer
from flamepy import _bson
from flamepy._cache import client as _cache_client
from flamepy._cache.local import (
    LOCAL_MIN_BYTES,
    RECYCLE_MIN_BYTES,
    TransferDir,
    is_loopback,
)
from flamepy._errors import NotFoundError
from flamepy.core import cache

BIG = LOCAL_MIN_BYTES * 4


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CacheServer]:
    srv = CacheServer(port=0, local_transfer=True, compression=None)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _clients() -> Iterator[None]:
    yield
    _cache_client.reset_clients()


def _no_flight(*args: object) -> object:
    raise AssertionError("a DoGet was made: the object did not come as a file")


def _raw_get(server: CacheServer, key: str) -> bytes:
    """What a Flight-only client (Flame's SDK) gets: the base row's data cell."""
    client = flight.FlightClient(f"grpc://127.0.0.1:{server.port}")
    try:
        table = client.do_get(flight.Ticket(f"{key}:0".encode())).read_all()
    finally:
        client.close()
    assert table.column("kind").to_pylist() == ["base"]
    return bytes(table.column("data")[0].as_py())


def test_a_big_put_is_a_file_and_every_client_reads_it(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(server, monkeypatch)
    value = os.urandom(BIG)
    array = np.arange(BIG // 8, dtype=np.float64)
    ref = cache.put_object("app/ssn", value)
    tensor_ref = cache.put_object("app/ssn", array)
    assert len(_objects(server)) == 2
    _cache_client.reset_clients()  # a fresh client: no local copy
    with monkeypatch.context() as patch:
        patch.setattr(_cache_client.CacheClient, "_fetch", _no_flight)
        assert cache.get_object(ref) == value
        got = cache.get_object(tensor_ref)
    np.testing.assert_array_equal(got, array)
    # A client that keeps to Flight gets the same payload, FLM-prefixed (flame-cache §6).
    payload = _raw_get(server, ref.key)
    assert payload[:4] == b"FLM\x00"
    assert cache.get_object(ref) == value
    assert _raw_get(server, tensor_ref.key)[:4] == b"FLM\x01"


def test_small_values_keep_to_flight_and_come_back_inline(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(server, monkeypatch)
    ref = cache.put_object("app/ssn", b"x" * 100)
    assert _objects(server) == []
    _cache_client.reset_clients()
    assert cache.get_object(ref) == b"x" * 100


def test_update_and_delete_remove_the_files(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(server, monkeypatch)
    ref = cache.put_object("app/ssn", b"a" * BIG)
    first = _objects(server)
    newer = cache.update_object(ref, b"b" * BIG)
    assert newer.version == 2
    second = _objects(server)
    assert len(second) == 1 and second != first  # the old file went with the old version
    _cache_client.reset_clients()
    assert cache.get_object(newer) == b"b" * BIG
    cache.delete_objects("app/ssn")
    _cache_client.reset_clients()
    with pytest.raises(NotFoundError):
        cache.get_object(newer)
    assert _objects(server) == []


def test_reading_back_an_object_put_as_a_file_moves_no_data(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(server, monkeypatch)
    ref = cache.put_object("app/ssn", b"z" * BIG)
    client = _cache_client.client_for(server.endpoint)
    assert client.local.get(ref.key) is None  # no copy kept: the file is the copy
    monkeypatch.setattr(_cache_client.CacheClient, "_fetch", _no_flight)
    assert cache.get_object(ref) == b"z" * BIG  # its file, found by name
    monkeypatch.setattr(_cache_client.CacheClient, "_action", _no_flight)
    assert client.get_entry(ref.key, ref.version).base.size > BIG  # not even asked


def test_a_cache_without_transfers_is_used_over_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    with CacheServer(port=0) as plain:
        _use(plain, monkeypatch)
        ref = cache.put_object("app/ssn", b"q" * BIG)
        client = _cache_client.client_for(plain.endpoint)
        assert client.transfer_dir() is None
        _cache_client.reset_clients()
        assert cache.get_object(ref) == b"q" * BIG


def test_only_a_directory_holding_the_token_is_trusted(tmp_path: Path) -> None:
    (tmp_path / "TOKEN").write_text("right")
    tmp_path.chmod(0o700)
    assert TransferDir.verified(str(tmp_path), "right") == TransferDir(tmp_path)
    tmp_path.chmod(0o770)  # others could swap files in it
    assert TransferDir.verified(str(tmp_path), "right") is None
    tmp_path.chmod(0o750)  # others could read the payloads in it
    assert TransferDir.verified(str(tmp_path), "right") is None
    tmp_path.chmod(0o700)
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path)
    assert TransferDir.verified(str(link), "right") is None
    assert TransferDir.verified(str(tmp_path), "wrong") is None
    assert TransferDir.verified(str(tmp_path / "missing"), "right") is None
    assert TransferDir.verified(None, "right") is None
    assert is_loopback("grpc://127.0.0.1:9090") and is_loopback("grpc://localhost:1")
    assert is_loopback("grpc://[::1]:9090")
    assert not is_loopback("grpc://10.1.2.3:9090") and not is_loopback("grpc://cache:9090")


def _action(server: CacheServer, kind: str, body: bytes) -> list[bytes]:
    client = flight.FlightClient(f"grpc://127.0.0.1:{server.port}")
    try:
        return [r.body.to_pybytes() for r in client.do_action(flight.Action(kind, body))]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not bson", "not a BSON document"),
        (_bson.encode({"target": "app/ssn"}), "needs a string 'file'"),
        (_bson.encode({"target": "app/ssn", "file": "../../etc/passwd"}), "is not a name"),
        (_bson.encode({"target": "app/ssn", "file": "0" * 32 + ".part"}), "is not in"),
        (_bson.encode({"target": "bad key", "file": "0" * 32 + ".part"}), "invalid key"),
    ],
)
def test_bad_local_puts_are_invalid_argument(
    server: CacheServer, body: bytes, message: str
) -> None:
    with pytest.raises(pa.ArrowInvalid, match=message):
        _action(server, "LOCAL_PUT", body)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "directory", "fifo"])
def test_only_a_plain_file_is_adopted(server: CacheServer, tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    assert server.local_dir is not None
    name = "1" * 32 + ".part"
    path = Path(server.local_dir) / name
    if kind == "symlink":
        path.symlink_to(secret)
    elif kind == "hardlink":  # another name of a file the server might serve
        other = Path(server.local_dir) / "other"
        other.write_bytes(b"not yours")
        os.link(other, path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # opening it for reading would block a server thread
    with pytest.raises(pa.ArrowInvalid, match="must be a regular file"):
        _action(server, "LOCAL_PUT", _bson.encode({"target": "app/ssn", "file": name}))
    assert _objects(server) == []
    assert server.store.listing() == []


def test_a_server_without_transfers_refuses_the_actions() -> None:
    with (
        CacheServer(port=0) as plain,
        pytest.raises(pa.ArrowInvalid, match="unknown action 'LOCAL_DIR'; supported: DELETE"),
    ):
        _action(plain, "LOCAL_DIR", b"")


def test_local_get_of_a_missing_key_is_not_found(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(server, monkeypatch)
    with pytest.raises(NotFoundError):
        cache.get_object(cache.ObjectRef(server.endpoint, "app/ssn/nothing", 1))
    bad = _bson.encode({"key": "app/ssn/x", "version": -1})
    with pytest.raises(pa.ArrowInvalid, match="non-negative"):
        _action(server, "LOCAL_GET", bad)


def test_a_dead_servers_directory_is_removed_by_the_next(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / "flame-cache-dead"
    live = tmp_path / "flame-cache-live"
    for path, pid in ((dead, int(gone.stdout)), (live, os.getppid())):
        path.mkdir()
        (path / "OWNER").write_text(str(pid))
        (path / "1.obj").write_bytes(b"x")
    transfer = LocalTransfer(tmp_path)
    try:
        assert not dead.exists()
        assert (live / "1.obj").exists()
    finally:
        transfer.close()
    assert not transfer.dir.exists()


def test_stopping_the_server_removes_the_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    srv = CacheServer(port=0, local_transfer=True)
    srv.start()
    directory = srv.local_dir
    assert directory is not None and Path(directory, "TOKEN").is_file()
    _use(srv, monkeypatch)
    cache.put_object("app/ssn", b"w" * BIG)
    # owner-only: the directory 0700, everything in it 0600 or 0700
    assert Path(directory).stat().st_mode & 0o777 == 0o700
    for item in Path(directory).rglob("*"):
        assert item.stat().st_mode & 0o077 == 0, item
    srv.stop()
    assert not Path(directory).exists()


def test_adopted_objects_are_written_to_storage_and_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = tmp_path / "store"
    value = os.urandom(BIG)
    with CacheServer(port=0, local_transfer=True, storage=str(storage)) as srv:
        _use(srv, monkeypatch)
        ref = cache.put_object("app/ssn", value)
        assert len(_objects(srv)) == 1  # it came as a file
    _cache_client.reset_clients()
    with CacheServer(port=0, local_transfer=True, storage=str(storage)) as again:
        _use(again, monkeypatch)
        moved = cache.ObjectRef(again.endpoint, ref.key, ref.version)
        assert cache.get_object(moved) == value


RUNNER_LIB = """
import numpy as np


def scale(array, factor):
    return array * factor


def echo(data):
    return bytes(reversed(data))
"""


def test_runner_arguments_and_results_go_as_files(
    flame_env: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import uuid

    from flame_testkit import ClusterThread
    from flamepy import Runner

    assert isinstance(flame_env, ClusterThread)
    cache_server = flame_env.cluster.cache
    assert cache_server is not None and cache_server.local_dir is not None
    lib = user_module(tmp_path, monkeypatch, RUNNER_LIB, "locallib")
    try:
        array = np.random.default_rng(0).random(BIG)  # 8 x BIG bytes
        data = os.urandom(4 * 1024 * 1024)  # over LARGE_ARGUMENT: staged in the cache
        with Runner(f"local-{uuid.uuid4().hex[:8]}") as rr:
            scaled_future = rr.service(lib.scale)(array, 2.0)
            echoed_future = rr.service(lib.echo)(data)
            scaled, echoed = rr.get([scaled_future, echoed_future], 120)
            # The 2 results stay while their futures live; the 2 staged arguments
            # are deleted once their calls are done, and their files are pooled.
            _eventually(lambda: len(_objects(cache_server)) == 2)
            assert 1 <= len(_pooled(cache_server)) <= 2
            # A result whose future is gone is deleted too, unless its ref was
            # taken: then the caller owns the object.
            kept = rr.service(lib.echo)(data)
            kept_ref = kept.ref(120)
            del scaled_future, echoed_future, kept
            _eventually(lambda: len(_objects(cache_server)) == 1)  # kept_ref's
            assert cache.get_object(kept_ref) == data[::-1]
            # The zero-copy array still reads the deleted result's file.
            np.testing.assert_array_equal(scaled, array * 2.0)
            again = rr.service(lib.scale)(array, 3.0).get(120)  # may claim a pooled file
            np.testing.assert_array_equal(scaled, array * 2.0)
            np.testing.assert_array_equal(again, array * 3.0)
        assert echoed == data[::-1]
    finally:
        sys.modules.pop(lib.__name__, None)


def test_a_dropped_objects_file_is_reused_only_once_nobody_maps_it(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(server, monkeypatch)
    size = 2 * RECYCLE_MIN_BYTES
    first = cache.put_object("app/ssn", os.urandom(size))
    cache.delete_objects(first.key)
    pooled = _pooled(server)
    assert len(pooled) == 1  # the dropped object's file, kept for the next write
    inode = pooled[0].stat().st_ino
    _cache_client.reset_clients()

    # The next big write claims it: same file (inode), new content, read back whole.
    array = np.random.default_rng(1).random(size // 8)
    second = cache.put_object("app/ssn", array)
    assert _pooled(server) == []
    [obj] = _objects(server)
    assert (Path(server.local_dir or "") / obj).stat().st_ino == inode
    _cache_client.reset_clients()
    held = cache.get_object(second)  # a zero-copy view of that file
    np.testing.assert_array_equal(held, array)

    # Dropped while we still map it: the file goes to the pool, but the lease check
    # refuses it, so the next write takes a new file and ours is left untouched.
    cache.delete_objects(second.key)
    assert len(_pooled(server)) == 1
    third = cache.put_object("app/ssn", np.zeros(size // 8))
    np.testing.assert_array_equal(held, array)  # not overwritten under us
    assert len(_pooled(server)) == 1  # back in the pool, still mapped
    _cache_client.reset_clients()
    np.testing.assert_array_equal(cache.get_object(third), np.zeros(size // 8))

    # Once the view is gone, the file is free again and the next write reuses it.
    del held
    gc.collect()
    cache.put_object("app/ssn", os.urandom(size))
    assert _pooled(server) == []


def test_small_files_are_not_pooled_and_the_pool_is_bounded(
    server: CacheServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flame_testkit._cache_local import POOL_FILES

    _use(server, monkeypatch)
    small = cache.put_object("app/ssn", os.urandom(BIG))  # a file, but under 1 MiB
    cache.delete_objects(small.key)
    assert _pooled(server) == []
    refs = [
        cache.put_object("app/ssn", os.urandom(RECYCLE_MIN_BYTES)) for _ in range(POOL_FILES + 2)
    ]
    cache.delete_objects("app/ssn")
    assert len(refs) > POOL_FILES and len(_pooled(server)) == POOL_FILES
