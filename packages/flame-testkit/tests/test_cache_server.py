"""The local object cache against a raw ``pyarrow.flight.FlightClient`` (flame-cache.md).

Every test talks to a real :class:`CacheServer` on 127.0.0.1:0.  gRPC status
codes are checked with a plain grpcio channel and hand-encoded protobuf
messages, because pyarrow's client exceptions are rebuilt from Arrow status
details and do not prove which gRPC code went over the wire.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flame_testkit import _cache_server
from flame_testkit._cache_disk import parse_storage_url
from flame_testkit._cache_server import RESPONSE_SCHEMA, CacheServer
from flamepy._bson import decode

UPLOAD = pa.schema([("version", pa.uint64()), ("data", pa.binary())])
SERVICE = "/arrow.flight.protocol.FlightService/"
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
Row = tuple[int, str, bytes]

# ---------------------------------------------------------------- helpers


@pytest.fixture
def server() -> Iterator[CacheServer]:
    with CacheServer() as s:
        yield s


@pytest.fixture
def client(server: CacheServer) -> Iterator[flight.FlightClient]:
    c = flight.FlightClient(server.endpoint, generic_options=UNLIMITED)
    yield c
    c.close()


def opaque(*cells: bytes) -> pa.RecordBatch:
    return pa.record_batch([pa.array([0] * len(cells), pa.uint64()), pa.array(cells)], UPLOAD)


def upload(
    client: flight.FlightClient,
    descriptor: flight.FlightDescriptor,
    *batches: pa.RecordBatch,
    schema: pa.Schema | None = None,
) -> dict[str, Any]:
    schema = schema or (batches[0].schema if batches else UPLOAD)
    writer, reader = client.do_put(descriptor, schema)
    for batch in batches:
        writer.write_batch(batch)
    writer.done_writing()
    meta = reader.read()
    writer.close()
    assert meta is not None
    return dict(decode(meta.to_pybytes()))


def put(client: flight.FlightClient, target: str, *cells: bytes) -> dict[str, Any]:
    return upload(client, flight.FlightDescriptor.for_path(target), opaque(*cells))


def patch(client: flight.FlightClient, key: str, data: bytes) -> dict[str, Any]:
    descriptor = flight.FlightDescriptor.for_command(b"PATCH:" + key.encode())
    return upload(client, descriptor, opaque(data))


def native(table: pa.Table, logical: bytes = b"pyarrow.table") -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata.update(
        {
            b"flame.cache.format": b"arrow-table-v1",
            b"flame.cache.version": b"0",
            b"flame.cache.logical_type": logical,
        }
    )
    return table.replace_schema_metadata(metadata)


def put_table(
    client: flight.FlightClient, target: str | flight.FlightDescriptor, table: pa.Table
) -> dict[str, Any]:
    if isinstance(target, str):
        target = flight.FlightDescriptor.for_path(target)
    return upload(client, target, *table.to_batches(), schema=table.schema)


def fetch(client: flight.FlightClient, ticket: str) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    reader = client.do_get(flight.Ticket(ticket.encode()))
    batches = [chunk.data for chunk in reader]
    return reader.schema, batches


def rows(client: flight.FlightClient, ticket: str) -> list[Row]:
    schema, batches = fetch(client, ticket)
    assert schema == RESPONSE_SCHEMA
    assert all(b.num_rows == 1 for b in batches)  # one row per record batch
    return [(r["version"], r["kind"], r["data"]) for b in batches for r in b.to_pylist()]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def flight_data(
    descriptor: flight.FlightDescriptor, schema: pa.Schema, *batches: Any
) -> list[bytes]:
    """DoPut FlightData messages: descriptor + schema, then one message per batch."""
    header = pa.ipc.read_message(schema.serialize()).metadata.to_pybytes()
    out = [_field(1, descriptor.serialize()) + _field(2, header)]
    for batch in batches:
        message = pa.ipc.read_message(batch.serialize())
        out.append(
            _field(2, message.metadata.to_pybytes()) + _field(1000, message.body.to_pybytes())
        )
    return out


def raw_call(
    server: CacheServer, method: str, *requests: bytes
) -> tuple[grpc.StatusCode, list[bytes]]:
    """Call one Flight RPC with serialized messages; returns (status, reply messages)."""
    streaming = method in ("DoPut", "Handshake", "DoExchange")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            if method == "PollFlightInfo":
                return grpc.StatusCode.OK, [channel.unary_unary(SERVICE + method)(requests[0])]
            if streaming:
                call = channel.stream_stream(SERVICE + method)(iter(requests))
            else:
                call = channel.unary_stream(SERVICE + method)(requests[0])
            return grpc.StatusCode.OK, list(call)
        except grpc.RpcError as exc:
            return exc.code(), []


def get_status(server: CacheServer, ticket: str) -> grpc.StatusCode:
    return raw_call(server, "DoGet", _field(1, ticket.encode()))[0]


def put_status(server: CacheServer, descriptor: flight.FlightDescriptor, *batches: Any) -> Any:
    schema = batches[0].schema if batches else UPLOAD
    return raw_call(server, "DoPut", *flight_data(descriptor, schema, *batches))[0]


def action_status(server: CacheServer, kind: str, body: bytes) -> grpc.StatusCode:
    return raw_call(server, "DoAction", _field(1, kind.encode()) + _field(2, body))[0]


# ---------------------------------------------------------------- PUT (§4.1)


def test_put_to_a_prefix_creates_a_uuid_key_at_version_1(
    server: CacheServer, client: flight.FlightClient
) -> None:
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("app/ssn"), UPLOAD)
    writer.write_batch(opaque(b"hello"))
    writer.done_writing()
    raw = reader.read().to_pybytes()
    writer.close()
    ref = decode(raw)
    assert list(ref) == ["endpoint", "key", "version"]
    assert ref["endpoint"] == server.endpoint == f"grpc://127.0.0.1:{server.port}"
    app, ssn, object_id = str(ref["key"]).split("/")
    assert (app, ssn) == ("app", "ssn")
    assert object_id == str(__import__("uuid").UUID(object_id, version=4))  # lowercase UUID v4
    assert ref["version"] == 1
    assert b"\x12version\x00" + (1).to_bytes(8, "little") in raw  # BSON int64
    assert put(client, "app/ssn", b"x")["key"] != ref["key"]


def test_put_to_an_exact_key_creates_then_replaces_and_drops_patches(
    client: flight.FlightClient,
) -> None:
    assert put(client, "app/pkg/file.tar.gz", b"v1")["version"] == 1
    assert patch(client, "app/pkg/file.tar.gz", b"d")["version"] == 2
    ref = put(client, "app/pkg/file.tar.gz", b"v3")
    assert (ref["key"], ref["version"]) == ("app/pkg/file.tar.gz", 3)
    assert rows(client, "app/pkg/file.tar.gz:0") == [(3, "base", b"v3")]


def test_chunked_upload_of_many_1mib_rows_is_concatenated(client: flight.FlightClient) -> None:
    chunks = [bytes([i]) * (1 << 20) for i in range(12)]
    batches = [opaque(*chunks[i : i + 4]) for i in range(0, 12, 4)]
    ref = upload(client, flight.FlightDescriptor.for_path("app/pkg/big.bin"), *batches)
    assert ref["version"] == 1
    assert rows(client, "app/pkg/big.bin:0") == [(1, "base", b"".join(chunks))]


def test_a_single_16mib_message_goes_both_ways(client: flight.FlightClient) -> None:
    data = os.urandom(16 << 20)
    put(client, "app/ssn/large", data)
    assert rows(client, "app/ssn/large")[0][2] == data


def test_opaque_objects_above_the_binary_cell_limit_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_cache_server, "MAX_OPAQUE_BYTES", 1000)
    with CacheServer() as s:
        c = flight.FlightClient(s.endpoint)
        with pytest.raises(pa.ArrowInvalid, match="larger than 1000 bytes"):
            put(c, "app/ssn/x", b"a" * 600, b"b" * 600)
        desc = flight.FlightDescriptor.for_path("app/ssn/x")
        assert put_status(s, desc, opaque(b"a" * 1001)) == grpc.StatusCode.INVALID_ARGUMENT
        assert put(c, "app/ssn/x", b"a" * 1000)["version"] == 1


def test_put_without_any_batch_is_invalid(server: CacheServer, client: flight.FlightClient) -> None:
    desc = flight.FlightDescriptor.for_path("app/ssn/x")
    assert put_status(server, desc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(pa.ArrowInvalid, match="no data"):
        upload(client, desc)


def test_put_with_wrong_column_types_is_internal(
    server: CacheServer, client: flight.FlightClient
) -> None:
    wrong = pa.record_batch([pa.array([0], pa.int64()), pa.array([b"x"])], names=["v", "d"])
    desc = flight.FlightDescriptor.for_path("app/ssn/x")
    assert put_status(server, desc, wrong) == grpc.StatusCode.INTERNAL
    large = pa.record_batch(
        [pa.array([0], pa.uint64()), pa.array([b"x"], pa.large_binary())], names=["v", "d"]
    )
    with pytest.raises(flight.FlightInternalError, match="opaque schema"):
        upload(client, desc, large)


def test_columns_are_read_by_position_and_the_version_cell_is_ignored(
    client: flight.FlightClient,
) -> None:
    batch = pa.record_batch([pa.array([77], pa.uint64()), pa.array([b"ok"])], names=["a", "b"])
    assert upload(client, flight.FlightDescriptor.for_path("app/ssn/pos"), batch)["version"] == 1
    assert rows(client, "app/ssn/pos") == [(1, "base", b"ok")]


def test_descriptor_without_a_key_is_invalid(server: CacheServer) -> None:
    for desc in (
        flight.FlightDescriptor.for_command(b"nothing"),
        flight.FlightDescriptor.for_path(),
    ):
        assert put_status(server, desc, opaque(b"x")) == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- PATCH (§4.2)


def test_patch_appends_with_the_next_version(client: flight.FlightClient) -> None:
    put(client, "app/ssn/obj", b"base")
    assert [patch(client, "app/ssn/obj", d)["version"] for d in (b"a", b"b")] == [2, 3]
    assert rows(client, "app/ssn/obj:0") == [
        (1, "base", b"base"),
        (2, "patch", b"a"),
        (3, "patch", b"b"),
    ]


def test_patch_of_a_missing_object_is_not_found(
    server: CacheServer, client: flight.FlightClient
) -> None:
    with pytest.raises(pa.ArrowKeyError, match="object app/ssn/nope not found"):
        patch(client, "app/ssn/nope", b"x")
    desc = flight.FlightDescriptor.for_command(b"PATCH:app/ssn/nope")
    assert put_status(server, desc, opaque(b"x")) == grpc.StatusCode.NOT_FOUND


def test_native_tabular_deltas_are_refused(client: flight.FlightClient) -> None:
    put(client, "app/ssn/obj", b"base")
    table = native(pa.table({"version": pa.array([0], pa.uint64()), "data": [b"x"]}))
    desc = flight.FlightDescriptor.for_command(b"PATCH:app/ssn/obj")
    with pytest.raises(pa.ArrowInvalid, match="native tabular deltas"):
        put_table(client, desc, table)


def test_more_than_1000_deltas_is_invalid(server: CacheServer, client: flight.FlightClient) -> None:
    put(client, "app/ssn/log", b"")
    store = server.store
    for i in range(1000):
        store.patch("app/ssn/log", b"%d" % i)
    with pytest.raises(pa.ArrowInvalid, match="1000 deltas"):
        patch(client, "app/ssn/log", b"one too many")
    desc = flight.FlightDescriptor.for_command(b"PATCH:app/ssn/log")
    assert put_status(server, desc, opaque(b"x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert len(rows(client, "app/ssn/log")) == 1001


# ---------------------------------------------------------------- GET (§4.3)


@pytest.fixture
def patched(client: flight.FlightClient) -> flight.FlightClient:
    """app/ssn/obj: base v1, patches v2, v3, v4."""
    put(client, "app/ssn/obj", b"b1")
    for data in (b"p2", b"p3", b"p4"):
        patch(client, "app/ssn/obj", data)
    return client


FULL = [(1, "base", b"b1"), (2, "patch", b"p2"), (3, "patch", b"p3"), (4, "patch", b"p4")]


def test_get_full_sends_the_base_then_the_patches(patched: flight.FlightClient) -> None:
    assert rows(patched, "app/ssn/obj:0") == FULL


def test_ticket_without_a_colon_means_version_0(patched: flight.FlightClient) -> None:
    assert rows(patched, "app/ssn/obj") == FULL


def test_not_modified_is_the_response_schema_with_zero_batches(
    patched: flight.FlightClient,
) -> None:
    schema, batches = fetch(patched, "app/ssn/obj:4")
    assert schema == RESPONSE_SCHEMA
    assert batches == []


def test_only_the_newer_patches_are_sent_to_a_client_behind(patched: flight.FlightClient) -> None:
    assert rows(patched, "app/ssn/obj:2") == FULL[2:]
    assert rows(patched, "app/ssn/obj:1") == FULL[1:]


def test_a_client_ahead_of_the_server_gets_everything(patched: flight.FlightClient) -> None:
    assert rows(patched, "app/ssn/obj:9") == FULL


def test_a_base_newer_than_the_client_gets_everything(client: flight.FlightClient) -> None:
    put(client, "app/ssn/obj", b"b1")
    patch(client, "app/ssn/obj", b"p2")
    put(client, "app/ssn/obj", b"b3")
    patch(client, "app/ssn/obj", b"p4")
    assert rows(client, "app/ssn/obj:2") == [(3, "base", b"b3"), (4, "patch", b"p4")]
    assert rows(client, "app/ssn/obj:3") == [(4, "patch", b"p4")]


def _write_ipc(path: Path, version: int, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = pa.record_batch([pa.array([version], pa.uint64()), pa.array([data])], UPLOAD)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, UPLOAD) as writer:
        writer.write_batch(batch)


def test_a_gap_in_the_patch_versions_gets_everything(tmp_path: Path) -> None:
    _write_ipc(tmp_path / "app/ssn/obj.arrow", 1, b"b1")
    _write_ipc(tmp_path / "app/ssn/obj.deltas/0.arrow", 2, b"p2")
    _write_ipc(tmp_path / "app/ssn/obj.deltas/1.arrow", 5, b"p5")
    with CacheServer(storage=tmp_path) as s:
        c = flight.FlightClient(s.endpoint)
        full = [(1, "base", b"b1"), (2, "patch", b"p2"), (5, "patch", b"p5")]
        assert rows(c, "app/ssn/obj:2") == full
        assert rows(c, "app/ssn/obj:3") == full  # 4 is missing
        assert rows(c, "app/ssn/obj:4") == [(5, "patch", b"p5")]
        assert fetch(c, "app/ssn/obj:5")[1] == []


@pytest.mark.parametrize("version", ["", "abc", "-1", "1.5", " 1", "+1", "٣", str(2**64)])
def test_an_unparsable_ticket_version_is_invalid(
    server: CacheServer, client: flight.FlightClient, version: str
) -> None:
    put(client, "app/ssn/obj", b"x")
    assert get_status(server, f"app/ssn/obj:{version}") == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(pa.ArrowInvalid, match="invalid version"):
        fetch(client, f"app/ssn/obj:{version}")


def test_the_ticket_splits_on_the_first_colon(
    server: CacheServer, client: flight.FlightClient
) -> None:
    put(client, "app/ssn/obj", b"x")
    assert get_status(server, f"app/ssn/obj:{2**64 - 1}") == grpc.StatusCode.OK
    assert get_status(server, "app/ssn/obj:1:2") == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_key_is_not_found(server: CacheServer, client: flight.FlightClient) -> None:
    assert get_status(server, "app/ssn/nope:0") == grpc.StatusCode.NOT_FOUND
    with pytest.raises(pa.ArrowKeyError, match="object app/ssn/nope not found"):
        fetch(client, "app/ssn/nope")


def test_replies_are_zstd_compressed(server: CacheServer, client: flight.FlightClient) -> None:
    put(client, "app/ssn/zeros", bytes(4 << 20))
    status, replies = raw_call(server, "DoGet", _field(1, b"app/ssn/zeros:0"))
    assert status == grpc.StatusCode.OK
    assert sum(len(r) for r in replies) < 64 << 10  # 4 MiB of zeros, compressed
    put(client, "app/ssn/noise", os.urandom(1 << 20))
    _, replies = raw_call(server, "DoGet", _field(1, b"app/ssn/noise:0"))
    assert sum(len(r) for r in replies) > 1 << 20


def test_plain_replies_when_compression_is_off() -> None:
    with CacheServer(compression=None) as plain:
        c = flight.FlightClient(plain.endpoint, generic_options=UNLIMITED)
        try:
            put(c, "app/ssn/zeros", bytes(3 << 20))
            status, replies = raw_call(plain, "DoGet", _field(1, b"app/ssn/zeros:0"))
            assert status == grpc.StatusCode.OK
            assert sum(len(r) for r in replies) > 3 << 20
            _, batches = fetch(c, "app/ssn/zeros:0")
            assert batches[0].column("data")[0].as_py() == bytes(3 << 20)
        finally:
            c.close()


# ---------------------------------------------------------------- native tables (§3)


def test_native_table_round_trip_keeps_user_metadata(client: flight.FlightClient) -> None:
    frame = pd.DataFrame(
        {"a": [1, 2, 3], "b": ["x", "y", "z"]}, index=pd.Index([7, 8, 9], name="i")
    )
    table = native(pa.Table.from_pandas(frame), b"pandas.dataframe")
    ref = put_table(client, "app/ssn", table)
    assert ref["version"] == 1
    schema, batches = fetch(client, f"{ref['key']}:0")
    meta = schema.metadata
    assert meta[b"flame.cache.version"] == b"1"
    assert meta[b"flame.cache.format"] == b"arrow-table-v1"
    assert meta[b"flame.cache.logical_type"] == b"pandas.dataframe"
    assert meta[b"pandas"] == table.schema.metadata[b"pandas"]
    back = pa.Table.from_batches(batches, schema)
    assert back.equals(table)
    assert back.to_pandas().equals(frame)
    assert fetch(client, f"{ref['key']}:1") == (RESPONSE_SCHEMA, [])
    ref2 = put_table(client, ref["key"], table)
    assert ref2["version"] == 2
    assert fetch(client, f"{ref['key']}:1")[0].metadata[b"flame.cache.version"] == b"2"


def test_native_batches_and_dictionaries_are_kept(client: flight.FlightClient) -> None:
    first = pa.record_batch([pa.array(["x", "y"]).dictionary_encode()], names=["d"])
    second = pa.record_batch([pa.array(["z"]).dictionary_encode()], names=["d"])
    table = native(pa.Table.from_batches([first, second]))
    put_table(client, "app/ssn/dict", table)
    schema, batches = fetch(client, "app/ssn/dict")
    assert [b.num_rows for b in batches] == [2, 1]
    assert pa.Table.from_batches(batches, schema).to_pylist() == table.to_pylist()


def test_an_empty_native_table_is_accepted(client: flight.FlightClient) -> None:
    table = native(pa.table({"a": pa.array([], pa.int64())}))
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("app/ssn/empty"), table.schema)
    writer.write_batch(pa.record_batch([pa.array([], pa.int64())], schema=table.schema))
    writer.done_writing()
    assert decode(reader.read().to_pybytes())["version"] == 1
    writer.close()
    schema, batches = fetch(client, "app/ssn/empty")
    assert schema.names == ["a"]
    assert schema.metadata[b"flame.cache.version"] == b"1"
    assert sum(b.num_rows for b in batches) == 0


def test_a_schema_only_native_upload_is_an_empty_table(client: flight.FlightClient) -> None:
    table = native(pa.table({"a": pa.array([], pa.int64())}))
    desc = flight.FlightDescriptor.for_path("app/ssn/empty")
    assert upload(client, desc, schema=table.schema)["version"] == 1
    schema, batches = fetch(client, "app/ssn/empty")
    assert (schema.names, batches) == (["a"], [])
    assert schema.metadata[b"flame.cache.format"] == b"arrow-table-v1"


def test_a_patch_of_a_native_object_bumps_the_version_only(client: flight.FlightClient) -> None:
    table = native(pa.table({"a": [1]}))
    put_table(client, "app/ssn/t", table)
    assert patch(client, "app/ssn/t", b"ignored")["version"] == 2
    schema, batches = fetch(client, "app/ssn/t:1")
    assert pa.Table.from_batches(batches, schema).to_pylist() == [{"a": 1}]
    assert fetch(client, "app/ssn/t:2") == (RESPONSE_SCHEMA, [])


# ---------------------------------------------------------------- keys (§2) and DELETE (§4.4)

BAD_KEYS = [
    "app",
    "a/b/c/d",
    "a//c",
    "/b",
    "a/b/",
    "a/../c",
    "a/b/..x",
    "a/b\\c",
    "*/b",
    "a/b/*",
    "a/*/c",
]


@pytest.mark.parametrize("key", [*BAD_KEYS, "a/*"])
def test_invalid_keys_are_invalid_argument_on_put(
    server: CacheServer, client: flight.FlightClient, key: str
) -> None:
    assert put_status(server, flight.FlightDescriptor.for_path(key), opaque(b"x")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    with pytest.raises(pa.ArrowInvalid, match="invalid key"):
        put(client, key, b"x")


@pytest.mark.parametrize("key", [*BAD_KEYS, "a/*", "a/b"])
def test_invalid_keys_are_invalid_argument_on_get_and_patch(server: CacheServer, key: str) -> None:
    assert get_status(server, f"{key}:0") == grpc.StatusCode.INVALID_ARGUMENT
    desc = flight.FlightDescriptor.for_command(b"PATCH:" + key.encode())
    assert put_status(server, desc, opaque(b"x")) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("key", [*BAD_KEYS, "*/*"])
def test_invalid_keys_are_invalid_argument_on_delete(server: CacheServer, key: str) -> None:
    assert action_status(server, "DELETE", key.encode()) == grpc.StatusCode.INVALID_ARGUMENT


def _keys(client: flight.FlightClient) -> set[str]:
    return {info.descriptor.path[0].decode() for info in client.list_flights()}


def test_delete_a_key_a_session_and_all_sessions(client: flight.FlightClient) -> None:
    for key in ("a/s1/x", "a/s1/y", "a/s2/x", "a/s2/y", "b/s1/x", "ab/s1/x"):
        put(client, key, b"v")
    assert [r.body.to_pybytes() for r in client.do_action(flight.Action("DELETE", b"a/s1/x"))] == [
        b"OK"
    ]
    assert _keys(client) == {"a/s1/y", "a/s2/x", "a/s2/y", "b/s1/x", "ab/s1/x"}
    list(client.do_action(flight.Action("DELETE", b"a/s2")))
    assert _keys(client) == {"a/s1/y", "b/s1/x", "ab/s1/x"}
    list(client.do_action(flight.Action("DELETE", b"a/*")))
    assert _keys(client) == {"b/s1/x", "ab/s1/x"}
    with pytest.raises(pa.ArrowKeyError):
        fetch(client, "a/s1/y")


def test_delete_says_ok_when_nothing_matched(client: flight.FlightClient) -> None:
    for target in (b"none/s/x", b"none/s", b"none/*"):
        results = list(client.do_action(flight.Action("DELETE", target)))
        assert [r.body.to_pybytes() for r in results] == [b"OK"]


def test_unknown_action_is_invalid(server: CacheServer, client: flight.FlightClient) -> None:
    assert action_status(server, "PURGE", b"a/b") == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(pa.ArrowInvalid, match="unknown action"):
        list(client.do_action(flight.Action("delete", b"a/b")))


def test_list_actions_offers_delete_only(client: flight.FlightClient) -> None:
    assert [a.type for a in client.list_actions()] == ["DELETE"]


# ---------------------------------------------------------------- metadata RPCs (§4.5)


def test_get_flight_info_joins_the_path_and_does_not_check_existence(
    server: CacheServer, client: flight.FlightClient
) -> None:
    info = client.get_flight_info(flight.FlightDescriptor.for_path("app", "ssn", "nope"))
    assert info.descriptor.path == [b"app/ssn/nope"]
    assert info.schema is None
    assert (info.total_records, info.total_bytes) == (-1, -1)
    [endpoint] = info.endpoints
    assert endpoint.ticket.ticket == b"app/ssn/nope"
    assert [loc.uri.decode() for loc in endpoint.locations] == [server.endpoint]


def test_get_flight_info_reports_the_native_schema(client: flight.FlightClient) -> None:
    table = native(pa.table({"a": [1, 2]}))
    put_table(client, "app/ssn/t", table)
    put(client, "app/ssn/o", b"x")
    schema = client.get_flight_info(flight.FlightDescriptor.for_path("app/ssn/t")).schema
    assert schema.names == ["a"]
    assert schema.metadata[b"flame.cache.version"] == b"1"
    assert client.get_flight_info(flight.FlightDescriptor.for_path("app/ssn/o")).schema is None


def test_get_flight_info_without_a_path_is_invalid(client: flight.FlightClient) -> None:
    for desc in (flight.FlightDescriptor.for_path(), flight.FlightDescriptor.for_command(b"x")):
        with pytest.raises(pa.ArrowInvalid, match="PATH descriptor"):
            client.get_flight_info(desc)


def test_list_flights_has_one_entry_per_object(
    server: CacheServer, client: flight.FlightClient
) -> None:
    put(client, "app/ssn/a", b"12345")
    patch(client, "app/ssn/a", b"678")
    put(client, "app/ssn/b", b"")
    infos = {i.descriptor.path[0].decode(): i for i in client.list_flights()}
    assert set(infos) == {"app/ssn/a", "app/ssn/b"}
    info = infos["app/ssn/a"]
    assert (info.total_bytes, info.total_records, info.schema) == (8, -1, None)
    assert info.endpoints[0].ticket.ticket == b"app/ssn/a"
    assert info.endpoints[0].locations[0].uri.decode() == server.endpoint


def test_get_schema_is_always_the_response_schema(client: flight.FlightClient) -> None:
    schema = client.get_schema(flight.FlightDescriptor.for_path("any/thing")).schema
    assert schema == RESPONSE_SCHEMA
    assert [(f.name, f.type, f.nullable) for f in schema] == [
        ("version", pa.uint64(), False),
        ("kind", pa.utf8(), False),
        ("data", pa.binary(), False),
    ]


@pytest.mark.parametrize("method", ["Handshake", "DoExchange", "PollFlightInfo"])
def test_unimplemented_rpcs(server: CacheServer, method: str) -> None:
    desc = flight.FlightDescriptor.for_path("a/b").serialize()
    request = desc if method == "PollFlightInfo" else _field(1, desc)
    assert raw_call(server, method, request)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_unimplemented_rpcs_through_pyarrow(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowNotImplementedError):
        client.authenticate_basic_token("user", "password")
    with pytest.raises(pa.ArrowNotImplementedError):
        exchange(client)


def exchange(client: flight.FlightClient) -> None:
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"x"))
    writer.begin(UPLOAD)
    writer.done_writing()
    reader.read_all()


def test_internal_faults_are_internal(
    server: CacheServer, client: flight.FlightClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.store, "listing", broken)
    status, _ = raw_call(server, "ListFlights", b"")
    assert status == grpc.StatusCode.INTERNAL
    with pytest.raises(flight.FlightInternalError, match="boom"):
        list(client.list_flights())


# ---------------------------------------------------------------- eviction and disk (§8)


def test_lru_eviction_without_storage_loses_objects() -> None:
    with CacheServer(max_memory=3000) as s:
        c = flight.FlightClient(s.endpoint)
        for name in "abc":
            put(c, f"app/ssn/{name}", b"x" * 1000)
        rows(c, "app/ssn/a")  # a is now more recent than b
        put(c, "app/ssn/d", b"x" * 1000)
        assert _keys(c) == {"app/ssn/a", "app/ssn/c", "app/ssn/d"}
        assert get_status(s, "app/ssn/b:0") == grpc.StatusCode.NOT_FOUND
        assert s.store.memory_used == 3000


def test_max_objects_evicts_the_least_recently_used() -> None:
    with CacheServer(max_objects=2) as s:
        c = flight.FlightClient(s.endpoint)
        put(c, "app/ssn/a", b"1")
        put(c, "app/ssn/b", b"2")
        patch(c, "app/ssn/a", b"3")
        put(c, "app/ssn/c", b"4")
        assert _keys(c) == {"app/ssn/a", "app/ssn/c"}


def test_an_object_larger_than_max_memory_is_refused_without_a_disk() -> None:
    # max_memory is a budget: with nowhere to spill it, an object that cannot fit
    # is refused, naming its size, the budget and the setting (C1 would lose it).
    with CacheServer(max_memory=10) as s:
        c = flight.FlightClient(s.endpoint)
        put(c, "app/ssn/a", b"x" * 10)
        message = r"at least 100 bytes .* memory budget, 10 bytes \(max_memory;.*no disk"
        with pytest.raises(pa.ArrowInvalid, match=message):
            put(c, "app/ssn/b", b"y" * 100)
        desc = flight.FlightDescriptor.for_path("app/ssn/b")
        assert put_status(s, desc, opaque(b"y" * 100)) == grpc.StatusCode.INVALID_ARGUMENT
        assert rows(c, "app/ssn/a") == [(1, "base", b"x" * 10)]
        assert s.store.memory_used == 10


def test_lru_eviction_with_storage_reloads_objects(tmp_path: Path) -> None:
    with CacheServer(storage=tmp_path, max_memory=2500) as s:
        c = flight.FlightClient(s.endpoint)
        put(c, "app/ssn/a", b"a" * 1000)
        patch(c, "app/ssn/a", b"A")
        put_table(c, "app/ssn/t", native(pa.table({"n": list(range(100))})))
        put(c, "app/ssn/b", b"b" * 1000)
        put(c, "app/ssn/c", b"c" * 1000)
        assert "app/ssn/a" not in _keys(c)
        assert rows(c, "app/ssn/a:0") == [(1, "base", b"a" * 1000), (2, "patch", b"A")]
        assert rows(c, "app/ssn/a:1") == [(2, "patch", b"A")]
        assert patch(c, "app/ssn/a", b"B")["version"] == 3
        schema, batches = fetch(c, "app/ssn/t")
        assert pa.Table.from_batches(batches, schema)["n"].to_pylist() == list(range(100))
        assert put(c, "app/ssn/b", b"new")["version"] == 2  # replacing an evicted object


def test_disk_layout_and_restart_restore_everything(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.5, 2.5], "y": ["p", "q"]})
    table = native(pa.Table.from_pandas(frame), b"pandas.dataframe")
    with CacheServer(storage=f"fs://{tmp_path}") as s:
        c = flight.FlightClient(s.endpoint)
        key = put(c, "app/ssn", b"base")["key"]
        patch(c, key, b"d1")
        patch(c, key, b"d2")
        put(c, "app/ssn/replaced", b"old")
        patch(c, "app/ssn/replaced", b"old delta")
        put(c, "app/ssn/replaced", b"new")
        put_table(c, "app/pkg/frame", table)
        put_table(c, "app/pkg/frame", table)
        put(c, "app/gone/x", b"x")
        list(c.do_action(flight.Action("DELETE", b"app/gone")))
    object_id = key.split("/")[2]
    assert (tmp_path / f"app/ssn/{object_id}.arrow").is_file()
    assert sorted(p.name for p in (tmp_path / f"app/ssn/{object_id}.deltas").iterdir()) == [
        "0.arrow",
        "1.arrow",
    ]
    assert not (tmp_path / "app/ssn/replaced.deltas").exists()
    assert not (tmp_path / "app/gone").exists()
    # owner-only: directories 0700, files 0600, the root included
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    for item in tmp_path.rglob("*"):
        assert stat.S_IMODE(item.stat().st_mode) == (0o700 if item.is_dir() else 0o600), item
    with pa.OSFile(str(tmp_path / f"app/ssn/{object_id}.arrow")) as f:
        stored = pa.ipc.open_file(f).read_all()
    assert stored.schema == UPLOAD
    assert stored.to_pylist() == [{"version": 1, "data": b"base"}]

    with CacheServer(storage=f"file://{tmp_path}") as s:
        c = flight.FlightClient(s.endpoint)
        assert _keys(c) == {key, "app/ssn/replaced", "app/pkg/frame"}
        assert rows(c, f"{key}:0") == [
            (1, "base", b"base"),
            (2, "patch", b"d1"),
            (3, "patch", b"d2"),
        ]
        assert rows(c, "app/ssn/replaced:0") == [(3, "base", b"new")]
        schema, batches = fetch(c, "app/pkg/frame:1")
        assert schema.metadata[b"flame.cache.version"] == b"2"
        assert pa.Table.from_batches(batches, schema).to_pandas().equals(frame)
        assert fetch(c, "app/pkg/frame:2") == (RESPONSE_SCHEMA, [])
        assert patch(c, key, b"d3")["version"] == 4
        list(c.do_action(flight.Action("DELETE", b"app/*")))
    assert not (tmp_path / "app").exists()


def test_native_tables_with_changing_dictionaries_persist(tmp_path: Path) -> None:
    first = pa.record_batch([pa.array(["x", "y"]).dictionary_encode()], names=["d"])
    second = pa.record_batch([pa.array(["z", "x"]).dictionary_encode()], names=["d"])
    table = native(pa.Table.from_batches([first, second]))
    with CacheServer(storage=tmp_path) as s:
        put_table(flight.FlightClient(s.endpoint), "app/ssn/dict", table)
    with CacheServer(storage=tmp_path) as s:
        schema, batches = fetch(flight.FlightClient(s.endpoint), "app/ssn/dict")
    assert schema.metadata[b"flame.cache.version"] == b"1"
    assert pa.Table.from_batches(batches, schema).to_pylist() == table.to_pylist()


def test_patch_files_without_a_version_are_numbered_after_the_base(tmp_path: Path) -> None:
    _write_ipc(tmp_path / "app/ssn/obj.arrow", 5, b"b")
    for n in range(3):
        _write_ipc(tmp_path / f"app/ssn/obj.deltas/{n}.arrow", 0, b"%d" % n)
    with CacheServer(storage=tmp_path) as s:
        c = flight.FlightClient(s.endpoint)
        assert [r[0] for r in rows(c, "app/ssn/obj")] == [5, 6, 7, 8]


def test_leftover_temp_and_corrupt_files_are_ignored_at_load(tmp_path: Path) -> None:
    with CacheServer(storage=tmp_path) as s:
        c = flight.FlightClient(s.endpoint)
        put(c, "app/ssn/ok", b"intact")
        patch(c, "app/ssn/ok", b"delta")
    good = (tmp_path / "app/ssn/ok.arrow").read_bytes()
    (tmp_path / "app/ssn/.ok.arrow.0123abcd.tmp").write_bytes(good[: len(good) // 2])
    (tmp_path / "app/ssn/.new.arrow.99.tmp").write_bytes(good[:10])
    (tmp_path / "app/ssn/ok.deltas/.1.arrow.77.tmp").write_bytes(good[:20])
    (tmp_path / "app/ssn/broken.arrow").write_bytes(good[:30])
    with CacheServer(storage=tmp_path) as s:
        c = flight.FlightClient(s.endpoint)
        assert _keys(c) == {"app/ssn/ok"}
        assert rows(c, "app/ssn/ok") == [(1, "base", b"intact"), (2, "patch", b"delta")]


def test_a_failed_write_leaves_the_old_object_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CacheServer(storage=tmp_path) as s:
        c = flight.FlightClient(s.endpoint)
        put(c, "app/ssn/obj", b"old")

        def crash(src: object, dst: object) -> None:
            raise OSError("disk gone")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(flight.FlightInternalError, match="disk gone"):
            put(c, "app/ssn/obj", b"new" * 1000)
        monkeypatch.undo()
        assert rows(c, "app/ssn/obj") == [(1, "base", b"old")]
    assert sorted(p.name for p in (tmp_path / "app/ssn").iterdir()) == ["obj.arrow"]
    with CacheServer(storage=tmp_path) as s:
        assert rows(flight.FlightClient(s.endpoint), "app/ssn/obj") == [(1, "base", b"old")]


def test_storage_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLAME_HOME", raising=False)
    assert parse_storage_url(None) is None
    assert parse_storage_url("none") is None
    assert parse_storage_url("") is None
    assert parse_storage_url("fs:///data/cache") == Path("/data/cache")
    assert parse_storage_url("file:///data/cache") == Path("/data/cache")
    assert parse_storage_url("/data/cache") == Path("/data/cache")
    assert parse_storage_url("fs://cache") == Path("/var/lib/flame/cache")
    monkeypatch.setenv("FLAME_HOME", "/opt/flame")
    assert parse_storage_url("fs://cache") == Path("/opt/flame/cache")
    for bad in ("s3://bucket", "relative/dir", "file://relative"):
        with pytest.raises(ValueError, match="storage"):
            parse_storage_url(bad)


# ---------------------------------------------------------------- server lifecycle, TLS, threads


def test_stop_is_idempotent_and_the_endpoint_needs_a_running_server() -> None:
    s = CacheServer()
    with pytest.raises(RuntimeError):
        _ = s.endpoint
    s.start()
    assert s.endpoint.startswith("grpc://127.0.0.1:")
    s.stop()
    s.stop()
    with pytest.raises(RuntimeError):
        _ = s.endpoint


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_endpoint_is_advertised_as_grpc_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with CacheServer(tls=(cert.read_bytes(), key.read_bytes())) as s:
        assert s.endpoint == f"grpc+tls://127.0.0.1:{s.port}"
        c = flight.FlightClient(s.endpoint, tls_root_certs=cert.read_bytes())
        ref = put(c, "app/ssn", b"secret")
        assert ref["endpoint"] == s.endpoint
        assert rows(c, f"{ref['key']}:0") == [(1, "base", b"secret")]


def test_eight_threads_at_once_lose_nothing(server: CacheServer) -> None:
    errors: list[BaseException] = []
    client = flight.FlightClient(server.endpoint)
    put(client, "app/shared/log", b"")

    def work(n: int) -> None:
        try:
            c = flight.FlightClient(server.endpoint)
            for i in range(15):
                key = put(c, f"app/t{n}", b"%d-%d" % (n, i))["key"]
                assert patch(c, key, b"p")["version"] == 2
                assert rows(c, f"{key}:0") == [(1, "base", b"%d-%d" % (n, i)), (2, "patch", b"p")]
                patch(c, "app/shared/log", b"%d-%d" % (n, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(_keys(client)) == 8 * 15 + 1
    log = rows(client, "app/shared/log:0")
    assert [r[0] for r in log] == list(range(1, 8 * 15 + 2))
    assert {r[2] for r in log[1:]} == {b"%d-%d" % (n, i) for n in range(8) for i in range(15)}
