"""Payload encodings of the object cache (flame-cache.md §3 and §6).

A value becomes either a *native table* (Arrow schema + batches, for pyarrow
tables and record batches, pandas and polars frames, and objects with a
``to_arrow()``) or an *opaque* payload: 4 magic bytes ``FLM\\0``..``FLM\\4`` and a
body.  Opaque payloads are kept as ``pyarrow.Buffer`` objects so that large
values are not copied more than once on the way in or out.
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass
from typing import Any

import cloudpickle
import pyarrow as pa

from flamepy._cache.copying import PARALLEL_MIN, bytes_at
from flamepy._errors import InvalidArgumentError
from flamepy._pickle import dumps_after

MAGIC_PICKLE = b"FLM\x00"
MAGIC_TENSOR = b"FLM\x01"
MAGIC_TABLE = b"FLM\x02"
MAGIC_ARRAY = b"FLM\x03"
MAGIC_BATCH = b"FLM\x04"

FORMAT_KEY = b"flame.cache.format"
VERSION_KEY = b"flame.cache.version"
LOGICAL_TYPE_KEY = b"flame.cache.logical_type"
NATIVE_FORMAT = b"arrow-table-v1"
FLAME_META_PREFIX = b"flame.cache."

LT_TABLE = "pyarrow.table"
LT_BATCH = "pyarrow.record_batch"
LT_PANDAS = "pandas.dataframe"
LT_POLARS = "polars.dataframe"
LT_DATASET = "dataset"

UPLOAD_SCHEMA = pa.schema([("version", pa.uint64()), ("data", pa.binary())])
RESPONSE_SCHEMA = pa.schema(
    [
        pa.field("version", pa.uint64(), nullable=False),
        pa.field("kind", pa.utf8(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Native:
    """A tabular value: uploaded as an ``arrow-table-v1`` object."""

    table: pa.Table
    logical_type: str


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def as_native(obj: Any) -> Native | None:
    if isinstance(obj, pa.Table):
        return Native(obj, LT_TABLE)
    if isinstance(obj, pa.RecordBatch):
        return Native(pa.Table.from_batches([obj]), LT_BATCH)
    module = _module_of(obj)
    if module == "pandas" and type(obj).__name__ == "DataFrame":
        return Native(pa.Table.from_pandas(obj), LT_PANDAS)
    if module == "polars" and type(obj).__name__ in ("DataFrame", "LazyFrame"):
        frame = obj.collect() if type(obj).__name__ == "LazyFrame" else obj
        return Native(frame.to_arrow(), LT_POLARS)
    to_arrow = getattr(obj, "to_arrow", None)
    if callable(to_arrow) and not isinstance(obj, type):
        try:
            value = to_arrow()
        except Exception:  # not a dataset after all: fall back to pickling
            return None
        if isinstance(value, pa.RecordBatch):
            value = pa.Table.from_batches([value])
        if isinstance(value, pa.Table):
            return Native(value, LT_DATASET)
    return None


def _stream(prefix: bytes, write: Any) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    sink.write(prefix)
    write(sink)
    return sink.getvalue()


def _tensor_payload(tensor: pa.Tensor) -> pa.Buffer:
    size = pa.ipc.get_tensor_size(tensor)
    buf = pa.allocate_buffer(len(MAGIC_TENSOR) + size)
    writer = pa.FixedSizeBufferWriter(buf)
    writer.write(MAGIC_TENSOR)
    pa.ipc.write_tensor(tensor, writer)  # the one copy: numpy memory -> payload
    return buf


def tensor_of(obj: Any) -> pa.Tensor | None:
    """A zero-copy Arrow tensor over ``obj`` when it is a contiguous numeric numpy
    array (sent as ``FLM\1``), else None."""
    if _module_of(obj) == "numpy" and type(obj).__name__ == "ndarray":
        flags = obj.flags
        if (flags.c_contiguous or flags.f_contiguous) and obj.dtype.kind in "iuf":
            return pa.Tensor.from_numpy(obj)
    return None


def encode_opaque(obj: Any, *, tables_as_stream: bool = False) -> pa.Buffer:
    """Encode a non-tabular value (or, for patches, a table) as an opaque payload."""
    tensor = tensor_of(obj)
    if tensor is not None:
        return _tensor_payload(tensor)
    if isinstance(obj, pa.Array):
        batch = pa.RecordBatch.from_arrays([obj], names=["data"])
        return _stream(MAGIC_ARRAY, lambda s: _write_batches(s, batch.schema, [batch]))
    if tables_as_stream and isinstance(obj, pa.Table):
        return _stream(MAGIC_TABLE, lambda s: _write_batches(s, obj.schema, obj.to_batches()))
    if tables_as_stream and isinstance(obj, pa.RecordBatch):
        return _stream(MAGIC_BATCH, lambda s: _write_batches(s, obj.schema, [obj]))
    try:
        return pa.py_buffer(dumps_after(MAGIC_PICKLE, obj))
    except Exception as exc:
        raise InvalidArgumentError(
            f"cannot serialize a {type(obj).__name__} for the object cache: {exc}"
        ) from exc


def _write_batches(sink: Any, schema: pa.Schema, batches: list[pa.RecordBatch]) -> None:
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def encode(obj: Any) -> Native | pa.Buffer:
    """Encode a value for put/update: a native table or an opaque payload."""
    return as_native(obj) or encode_opaque(obj)


def native_upload_table(native: Native) -> pa.Table:
    """The table as uploaded: schema metadata marks it ``arrow-table-v1``."""
    meta = dict(native.table.schema.metadata or {})
    meta[FORMAT_KEY] = NATIVE_FORMAT
    meta[VERSION_KEY] = b"0"
    meta[LOGICAL_TYPE_KEY] = native.logical_type.encode()
    return native.table.replace_schema_metadata(meta)


def is_native_schema(schema: pa.Schema) -> bool:
    return (schema.metadata or {}).get(FORMAT_KEY) == NATIVE_FORMAT


def decode_native(table: pa.Table) -> Any:
    """Turn a native cache table back into the kind of value that was put."""
    meta = dict(table.schema.metadata or {})
    logical = meta.get(LOGICAL_TYPE_KEY, LT_TABLE.encode()).decode()
    user_meta = {k: v for k, v in meta.items() if not k.startswith(FLAME_META_PREFIX)}
    table = table.replace_schema_metadata(user_meta or None)
    if logical == LT_BATCH:
        return table.combine_chunks().to_batches()[0] if table.num_rows else _empty_batch(table)
    if logical == LT_PANDAS:
        return table.to_pandas()
    if logical == LT_POLARS:
        import polars

        return polars.from_arrow(table)
    return table


# ``pa.array(<python list>)`` probes for pandas and so imports it (about a second);
# the small arrays of the cache protocol are built from buffers instead.


def uint64_array(*values: int) -> pa.Array:
    data = pa.py_buffer(struct.pack(f"<{len(values)}Q", *values))
    return pa.Array.from_buffers(pa.uint64(), len(values), [None, data])


def binary_array(cell: bytes | pa.Buffer, kind: pa.DataType | None = None) -> pa.Array:
    """One binary (or utf8) cell that wraps its buffer without a copy."""
    data = cell if isinstance(cell, pa.Buffer) else pa.py_buffer(cell)
    offsets = pa.py_buffer(struct.pack("<2i", 0, data.size))
    return pa.Array.from_buffers(kind or pa.binary(), 1, [None, offsets, data])


def utf8_array(text: str) -> pa.Array:
    return binary_array(text.encode(), kind=pa.utf8())


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    """A zero-row batch."""
    return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def _empty_batch(table: pa.Table) -> pa.RecordBatch:
    return empty_batch(table.schema)


def native_version(schema: pa.Schema) -> int:
    raw = (schema.metadata or {}).get(VERSION_KEY, b"0")
    try:
        return int(raw)
    except ValueError:
        return 0


class BsonInt64(int):
    """Stands in for pymongo's ``bson.int64.Int64`` when pymongo is not installed.

    Flame's own SDK decodes BSON with pymongo, so the ObjectRef versions it got from a
    PutResult (int64) are ``bson.int64.Int64``, and its pickles (Runner requests
    passing such refs) name that class.
    """


class _CompatUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except ImportError:
            if (module, name) == ("bson.int64", "Int64"):
                return BsonInt64
            raise


def unpickle(data: pa.Buffer | bytes | bytearray | memoryview) -> Any:
    """``cloudpickle.loads``, also accepting pickles that name ``bson.int64.Int64``
    when pymongo is not installed here (see :class:`BsonInt64`)."""
    try:
        return cloudpickle.loads(data)
    except ModuleNotFoundError as exc:
        if exc.name != "bson" and not (exc.name or "").startswith("bson."):
            raise
    return _CompatUnpickler(io.BytesIO(memoryview(data))).load()


_PROTO5 = b"\x80\x05"
_BINBYTES = b"B"  # then a 4-byte length
_BINBYTES8 = b"\x8e"  # then an 8-byte length
_ENDS = (b".", b"\x94.")  # STOP, or MEMOIZE + STOP


def _lone_bytes(body: pa.Buffer) -> bytes | None:
    """The value of a large pickle that is one ``bytes`` object and nothing else (as
    the same-host transfer writes it, or ``pickle.dumps(b)``), copied on two cores
    (see ``_cache.copying``); None for any other pickle, which is then unpickled."""
    size = body.size
    if size < PARALLEL_MIN:
        return None
    head = body[:11].to_pybytes()
    if head[:2] != _PROTO5:
        return None
    if head[2:3] == _BINBYTES:
        (length,) = struct.unpack_from("<I", head, 3)
        start = 7
    elif head[2:3] == _BINBYTES8:
        (length,) = struct.unpack_from("<Q", head, 3)
        start = 11
    else:
        return None
    if start + length > size or body[start + length :].to_pybytes() not in _ENDS:
        return None
    return bytes_at(body.address + start, length)


def decode_opaque(data: pa.Buffer | bytes | memoryview) -> Any:
    """Decode a ``data`` cell: FLM-prefixed bodies, or an older plain pickle."""
    buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    if buf.size < 4:
        return unpickle(buf)
    magic = buf[:4].to_pybytes()
    body = buf.slice(4)
    if magic == MAGIC_PICKLE:
        value = _lone_bytes(body)
        return unpickle(body) if value is None else value
    if magic == MAGIC_TENSOR:
        return pa.ipc.read_tensor(pa.BufferReader(body)).to_numpy()
    if magic in (MAGIC_TABLE, MAGIC_BATCH, MAGIC_ARRAY):
        table = pa.ipc.open_stream(body).read_all()
        if magic == MAGIC_TABLE:
            return table
        if magic == MAGIC_BATCH:
            return table.combine_chunks().to_batches()[0] if table.num_rows else _empty_batch(table)
        return table.column("data").combine_chunks()
    return unpickle(buf)  # an older, un-prefixed pickle


__all__ = [
    "RESPONSE_SCHEMA",
    "UPLOAD_SCHEMA",
    "Native",
    "decode_native",
    "decode_opaque",
    "encode",
    "encode_opaque",
    "is_native_schema",
    "native_upload_table",
    "native_version",
]
