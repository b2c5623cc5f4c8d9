"""The object cache client against a real Flight cache server (flame-cache.md)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flame_testkit._cache_server import CacheServer
from flamepy._cache import client as _cache_client
from flamepy._cache.codec import encode_opaque
from flamepy._errors import ConnectionFailedError, InvalidArgumentError, NotFoundError
from flamepy.core import cache
from flamepy.core.cache import ObjectRef


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheServer]:
    # A spill directory, as the local cluster has: an object over the memory budget
    # (the 1 GiB test) goes to disk instead of being refused.
    srv = CacheServer(port=0, spill=tmp_path_factory.mktemp("spill"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _endpoint(server: CacheServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FLAME_CACHE_ENDPOINT", server.endpoint)
    monkeypatch.setenv("FLAME_ENDPOINT", "http://127.0.0.1:1")  # configured: no embedded cluster
    yield
    _cache_client.reset_clients()


def _roundtrip(obj: object) -> object:
    ref = cache.put_object("app/ssn", obj)
    assert ref.version == 1 and ref.key.startswith("app/ssn/")
    _cache_client.reset_clients()  # a fresh client: no local copy
    return cache.get_object(ref)


def test_bytes_and_nested_objects() -> None:
    assert _roundtrip(b"\x00\x01bytes") == b"\x00\x01bytes"
    nested = {"a": [1, 2.5, None, ("t", {"deep": {1, 2}})], "b": b"x" * 100}
    assert _roundtrip(nested) == nested


def test_lambdas_and_closures() -> None:
    factor = 7
    fn = _roundtrip(lambda x: x * factor)
    assert callable(fn) and fn(6) == 42  # type: ignore[operator]


def test_contiguous_numpy_uses_arrow_tensors() -> None:
    for array in (np.arange(24, dtype=np.float32).reshape(4, 6), np.asfortranarray(np.eye(5))):
        ref = cache.put_object("app/ssn", array)
        raw = _raw_cell(ref)
        assert raw[:4] == b"FLM\x01"
        _cache_client.reset_clients()
        got = cache.get_object(ref)
        assert isinstance(got, np.ndarray) and got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)


def test_non_contiguous_numpy_falls_back_to_pickle() -> None:
    array = np.arange(30).reshape(5, 6)[:, ::2]
    ref = cache.put_object("app/ssn", array)
    assert _raw_cell(ref)[:4] == b"FLM\x00"
    np.testing.assert_array_equal(_roundtrip(array), array)  # type: ignore[arg-type]


def test_pyarrow_table_keeps_schema_metadata() -> None:
    table = pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]}).replace_schema_metadata(
        {"owner": "me"}
    )
    got = _roundtrip(table)
    assert isinstance(got, pa.Table) and got.equals(table)
    assert got.schema.metadata == {b"owner": b"me"}  # flame.cache.* keys removed


def test_record_batch_and_array() -> None:
    batch = pa.record_batch({"v": [1.5, 2.5]})
    got = _roundtrip(batch)
    assert isinstance(got, pa.RecordBatch) and got.equals(batch)
    array = pa.array(["p", "q"])
    got_array = _roundtrip(array)
    assert isinstance(got_array, pa.Array) and got_array.equals(array)


def test_pandas_dataframe() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    got = _roundtrip(frame)
    assert isinstance(got, pd.DataFrame)
    pd.testing.assert_frame_equal(got, frame)


def test_old_unprefixed_pickles_still_read(server: CacheServer) -> None:
    client = flight.FlightClient(server.endpoint)
    schema = pa.schema([("version", pa.uint64()), ("data", pa.binary())])
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("app/old"), schema)
    old = pickle.dumps({"legacy": True}, protocol=4)
    writer.write_batch(
        pa.record_batch([pa.array([0], pa.uint64()), pa.array([old])], schema=schema)
    )
    writer.done_writing()
    meta = reader.read()
    writer.close()
    from flamepy import _bson

    doc = _bson.decode(meta.to_pybytes())
    ref = ObjectRef(str(doc["endpoint"]), str(doc["key"]), int(doc["version"]))
    assert cache.get_object(ref) == {"legacy": True}


def _raw_cell(ref: ObjectRef) -> bytes:
    client = flight.FlightClient(ref.endpoint)
    table = client.do_get(flight.Ticket(f"{ref.key}:0".encode())).read_all()
    return table.column("data")[0].as_py()  # type: ignore[no-any-return]


# -- versions, conditional gets, patches ---------------------------------------------


def test_update_bumps_version_and_drops_patches() -> None:
    ref = cache.put_object("app/ssn", [1])
    patched = cache.patch_object(ref, [2])
    assert patched.version == 2
    updated = cache.update_object(patched, [10])
    assert updated.version == 3 and updated.key == ref.key
    seen: list[object] = []
    assert cache.get_object(updated, lambda base, patches: seen.append(patches) or base) == [10]
    assert seen == [[]]


def test_patches_reach_the_deserializer_in_order() -> None:
    ref = cache.put_object("app/ssn", [0])
    for i in (1, 2, 3):
        ref = cache.patch_object(ref, [i])
    assert ref.version == 4

    def merge(base: list[int], patches: list[list[int]]) -> list[int]:
        return base + [x for p in patches for x in p]

    assert cache.get_object(ref, merge) == [0, 1, 2, 3]
    assert cache.get_object(ref) == [0]  # without a deserializer: the base only


def test_repeated_gets_are_conditional(server: CacheServer) -> None:
    ref = cache.put_object("app/ssn", b"x" * 1000)
    client = _cache_client.client_for(server.endpoint)
    calls: list[int] = []
    original = client._fetch

    def spy(key: str, version: int) -> tuple[pa.Schema, list[pa.RecordBatch]]:
        schema, batches = original(key, version)
        calls.append(sum(b.num_rows for b in batches))
        return schema, batches

    client._fetch = spy  # type: ignore[method-assign]
    assert cache.get_object(ref) == b"x" * 1000
    assert calls == [0]  # our own put is cached: the server answered "not modified"
    patched = cache.patch_object(ref, b"p")
    cache.get_object(patched, lambda base, patches: patches)
    assert calls == [0, 1]  # only the new patch travelled


def test_patch_of_a_missing_object_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="not found"):
        cache.patch_object(ObjectRef(os.environ["FLAME_CACHE_ENDPOINT"], "app/ssn/nope"), b"d")


def test_get_of_a_missing_object_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        cache.get_object(ObjectRef(os.environ["FLAME_CACHE_ENDPOINT"], "app/ssn/missing", 1))


@pytest.mark.parametrize(
    "key",
    ["app", "app/../x", "app/ss\\n", "app//id", "/ssn", "*/ssn", "app/ssn/*", "a/b/c/d", "a/b:c"],
)
def test_invalid_keys_are_usage_errors(key: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid"):
        cache.put_object(key, b"x")


@pytest.mark.parametrize("key", ["app:1/ssn", "app/ssn:1", "app/ssn/id:1"])
def test_colon_in_a_key_is_refused_at_put_time(key: str, tmp_path: Path) -> None:
    # The DoGet ticket is "<key>:<version>": such an object could never be read back.
    with pytest.raises(InvalidArgumentError) as info:
        cache.put_object(key, b"x")
    assert repr(key) in str(info.value)
    assert "':' is not allowed in a key" in str(info.value)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match="':' is not allowed in a key"):
        cache.upload_object(key, str(tmp_path / "f"))


def test_server_refuses_a_colon_key_at_put_time(server: CacheServer) -> None:
    # put_encoded (the Runner's path for results) skips the client's key rules; the
    # server must refuse the key itself rather than store an object no ticket can name.
    with pytest.raises(InvalidArgumentError, match="ssn:1"):
        cache.put_encoded("app/ssn:1", encode_opaque(b"x"))
    client = flight.FlightClient(server.endpoint)
    try:
        keys = [info.descriptor.path[0].decode() for info in client.list_flights()]
    finally:
        client.close()
    assert not [k for k in keys if ":" in k]


def test_server_side_key_validation_is_typed(server: CacheServer) -> None:
    client = _cache_client.CacheClient(server.endpoint)
    # bypass the client's own checks to see the server's status
    with pytest.raises(InvalidArgumentError):
        client._call("raw", lambda: client._fetch("app/../x/y", 0))


def test_delete_key_session_and_app() -> None:
    a = cache.put_object("del/s1", 1)
    b = cache.put_object("del/s1", 2)
    c = cache.put_object("del/s2", 3)
    cache.delete_objects(a.key)
    with pytest.raises(NotFoundError):
        cache.get_object(a)
    assert cache.get_object(b) == 2
    cache.delete_objects("del/s1")
    with pytest.raises(NotFoundError):
        cache.get_object(b)
    cache.delete_objects("del/*")
    with pytest.raises(NotFoundError):
        cache.get_object(c)
    cache.delete_objects("del/*")  # nothing left: still fine


def test_upload_and_download_files(tmp_path: Path) -> None:
    source = tmp_path / "pkg.tar.gz"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several 1 MiB chunks
    ref = cache.upload_object("app/pkg/pkg.tar.gz", str(source))
    assert ref.key == "app/pkg/pkg.tar.gz"
    target = tmp_path / "out.bin"
    cache.download_object(ref, str(target))
    assert target.read_bytes() == source.read_bytes()


def test_grpcs_becomes_grpc_tls() -> None:
    assert _cache_client.flight_location("grpcs://h:9090") == "grpc+tls://h:9090"
    assert _cache_client.flight_location("grpc://h:9090") == "grpc://h:9090"
    assert _cache_client.flight_location("h:9090") == "grpc://h:9090"


def test_one_connection_per_endpoint(server: CacheServer) -> None:
    assert _cache_client.client_for(server.endpoint) is _cache_client.client_for(server.endpoint)


def test_objectref_bson_accepts_int32_and_int64() -> None:
    from flamepy import _bson

    ref = ObjectRef("grpc://h:1", "a/b/c", 5)
    small = ref.encode()
    wide = _bson.encode(
        {"endpoint": "grpc://h:1", "key": "a/b/c", "version": 5},
        int64_fields=frozenset({"version"}),
    )
    assert small != wide
    assert ObjectRef.decode(small) == ObjectRef.decode(wide) == ref
    with pytest.raises(InvalidArgumentError):
        ObjectRef.decode(_bson.encode({"endpoint": "e", "key": "k"}))
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert type(ref).__module__ == "flamepy.core.cache"


def test_async_forms() -> None:
    import asyncio

    async def main() -> object:
        ref = await cache.put_object_async("app/ssn", {"async": 1})
        ref = await cache.update_object_async(ref, {"async": 2})
        value = await cache.get_object_async(ref)
        await cache.delete_objects_async(ref.key)
        return value

    assert asyncio.run(main()) == {"async": 2}


def test_eight_threads_lose_nothing() -> None:
    errors: list[BaseException] = []
    refs: dict[tuple[int, int], ObjectRef] = {}

    def work(t: int) -> None:
        try:
            for i in range(40):
                refs[(t, i)] = cache.put_object(f"conc/t{t}", (t, i, os.urandom(100)))
                assert cache.get_object(refs[(t, i)])[:2] == (t, i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors
    assert len(refs) == 320 and len({r.key for r in refs.values()}) == 320
    _cache_client.reset_clients()
    for (t, i), ref in refs.items():
        assert cache.get_object(ref)[:2] == (t, i)


# -- failures ------------------------------------------------------------------------

SERVE = """
import sys, time
from flame_testkit._cache_server import CacheServer
srv = CacheServer(port=0, storage=sys.argv[1])
srv.start()
print(srv.endpoint, flush=True)
time.sleep(600)
"""


def _spawn_cache(storage: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(storage)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_cache_dying_mid_transfer_is_a_clear_error_and_leaves_no_partial_object(
    tmp_path: Path,
) -> None:
    proc, endpoint = _spawn_cache(tmp_path)
    try:
        client = _cache_client.CacheClient(endpoint, timeout=20)
        big = os.urandom(256 * 1024 * 1024)
        killer = threading.Timer(0.3, lambda: os.kill(proc.pid, signal.SIGKILL))
        killer.start()
        start = time.monotonic()
        with pytest.raises(ConnectionFailedError) as info:
            _put_repeatedly(client, big)
        assert time.monotonic() - start < 25
        assert endpoint in str(info.value)
        killer.join()
    finally:
        proc.kill()
        proc.wait()
    proc, endpoint = _spawn_cache(tmp_path)  # restart on the same storage
    try:
        client = _cache_client.CacheClient(endpoint, timeout=20)
        try:
            value = client.get("app/ssn/big")
        except NotFoundError:
            value = None
        assert value is None or value == big  # whole, or absent: never partial
    finally:
        proc.kill()
        proc.wait()


def _put_repeatedly(client: _cache_client.CacheClient, data: bytes) -> None:
    for _ in range(20):
        client.put("app/ssn/big", data)


def test_unreachable_cache_fails_fast() -> None:
    client = _cache_client.CacheClient("grpc://127.0.0.1:1", timeout=5)
    start = time.monotonic()
    with pytest.raises(ConnectionFailedError, match=r"127\.0\.0\.1:1"):
        client.put("app/ssn", b"x")
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_one_gib_object_round_trips(server: CacheServer) -> None:
    array = np.frombuffer(np.random.default_rng(1).bytes(1 << 30), dtype=np.uint8)
    ref = cache.put_object("big/ssn", array)
    _cache_client.reset_clients()
    got = cache.get_object(ref)
    assert got.nbytes == 1 << 30
    assert np.array_equal(got[:: 1 << 20], array[:: 1 << 20]) and got[-1] == array[-1]
    cache.delete_objects("big/*")
