"""Peer scenario: the object cache client of flamepy 0.6.0 against our Flight cache.

Input (refs are hex BSON ObjectRefs written by *our* client)::

    {"prefix": "<app>/<session>", "delete_prefix": "<app>/<session>",
     "ours": {"table": ref, "array": ref, "update_me": ref, "patch_me": ref, "file": ref},
     "upload_path": path, "download_path": path, "upload_key": key}

The peer reads our objects, puts its own (a numpy array, a pyarrow Table, bytes, a
dict, a file), updates and patches ours, deletes a session prefix, and reports
refs (hex BSON) and values for the test to check from our side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from _common import attempt, emit, read_input

from flamepy.core import cache
from flamepy.core.cache import ObjectRef


def ref_of(hex_bson: str) -> ObjectRef:
    return ObjectRef.decode(bytes.fromhex(hex_bson))


def ref_dict(ref: ObjectRef) -> dict[str, Any]:
    return {
        "endpoint": ref.endpoint,
        "key": ref.key,
        "version": int(ref.version),
        "version_type": type(ref.version).__name__,
        "bson": ref.encode().hex(),
    }


def table_dict(table: Any) -> dict[str, Any]:
    metadata = table.schema.metadata or {}
    return {
        "class": type(table).__module__ + "." + type(table).__name__,
        "columns": table.to_pydict(),
        "types": [str(f.type) for f in table.schema],
        "metadata": {k.decode(): v.decode() for k, v in metadata.items()},
    }


def array_dict(array: Any) -> dict[str, Any]:
    return {
        "class": type(array).__module__ + "." + type(array).__name__,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "values": array.tolist(),
    }


def main() -> None:
    given = read_input()
    ours = {name: ref_of(value) for name, value in given["ours"].items()}
    prefix = given["prefix"]

    read = {
        "table": table_dict(cache.get_object(ours["table"])),
        "array": array_dict(cache.get_object(ours["array"])),
        "update_me": cache.get_object(ours["update_me"]),
    }

    array = np.arange(12, dtype=np.float64).reshape(3, 4) / 4
    table = pa.table(
        {"n": pa.array([1, 2, 3], pa.int32()), "s": ["x", "y", None]},
        metadata={"origin": "peer"},
    )
    put = {
        "array": cache.put_object(prefix, array),
        "table": cache.put_object(prefix, table),
        "bytes": cache.put_object(prefix, b"\x00raw\xff"),
        "dict": cache.put_object(prefix, {"answer": 42, "list": [1, "two", None]}),
    }
    own_dict = put["dict"]
    own_updated = cache.update_object(own_dict, {"answer": 43})
    own_patched = cache.patch_object(own_updated, {"delta": 1})
    own_view = cache.get_object(own_patched, deserializer=lambda base, patches: [base, patches])

    updated = cache.update_object(ours["update_me"], {"updated_by": "peer"})
    patched = cache.patch_object(ours["patch_me"], ["peer-delta"])

    doomed = cache.put_object(given["delete_prefix"], "short-lived")
    cache.delete_objects(given["delete_prefix"])

    uploaded = cache.upload_object(given["upload_key"], given["upload_path"])
    downloaded = attempt(lambda: cache.download_object(ours["file"], given["download_path"]))

    samples = [("grpc://127.0.0.1:9090", "app/ssn/id", 1), ("grpc://h:1", "a/b/c", 2**40)]
    emit(
        {
            "read": read,
            "put": {name: ref_dict(ref) for name, ref in put.items()},
            "round_trip": {
                "array": array_dict(cache.get_object(put["array"])),
                "table": table_dict(cache.get_object(put["table"])),
                "bytes": cache.get_object(put["bytes"]).hex(),
            },
            "own_updated": ref_dict(own_updated),
            "own_patched": ref_dict(own_patched),
            "own_view": own_view,
            "own_plain": cache.get_object(own_patched),
            "updated": ref_dict(updated),
            "patched": ref_dict(patched),
            "deleted_get": attempt(lambda: cache.get_object(doomed)),
            "missing_patch": attempt(
                lambda: cache.patch_object(ObjectRef(doomed.endpoint, doomed.key, 1), "x")
            ),
            "uploaded": ref_dict(uploaded),
            "downloaded": downloaded,
            "encodings": [ObjectRef(e, k, v).encode().hex() for e, k, v in samples],
        }
    )


if __name__ == "__main__":
    main()
