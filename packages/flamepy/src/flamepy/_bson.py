"""The small subset of BSON that Flame's object cache uses.

ObjectRefs (``{endpoint, key, version}``) and the cache's PutResult metadata are
BSON documents with string and integer fields only.  Encoding follows pymongo's
rule for Python ints (int32 when the value fits, int64 otherwise); decoding
accepts both integer widths, as the server's PutResult uses int64.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from flamepy._errors import InvalidArgumentError

_STRING = 0x02
_INT32 = 0x10
_INT64 = 0x12
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

BsonValue = str | int


def encode(doc: Mapping[str, BsonValue], *, int64_fields: frozenset[str] = frozenset()) -> bytes:
    """Encode a flat document of str and int values (field order is kept).

    Integers named in ``int64_fields`` are always written as int64 (as the cache
    server does for ``version``); others use int32 when they fit.
    """
    body = bytearray()
    for name, value in doc.items():
        cname = name.encode() + b"\x00"
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            kind = type(value).__name__
            raise InvalidArgumentError(f"BSON field {name!r}: unsupported type {kind}")
        if isinstance(value, str):
            data = value.encode() + b"\x00"
            body += bytes([_STRING]) + cname + struct.pack("<i", len(data)) + data
        elif name not in int64_fields and _INT32_MIN <= value <= _INT32_MAX:
            body += bytes([_INT32]) + cname + struct.pack("<i", value)
        elif _INT64_MIN <= value <= _INT64_MAX:
            body += bytes([_INT64]) + cname + struct.pack("<q", value)
        else:
            raise InvalidArgumentError(f"BSON field {name!r}: {value} does not fit in 64 bits")
    return struct.pack("<i", len(body) + 5) + bytes(body) + b"\x00"


def decode(data: bytes) -> dict[str, BsonValue]:
    """Decode a flat document of string, int32 and int64 fields."""
    view = memoryview(data)
    if len(view) < 5:
        raise InvalidArgumentError("not a BSON document: shorter than 5 bytes")
    (total,) = struct.unpack_from("<i", view, 0)
    if total != len(view) or view[-1] != 0:
        raise InvalidArgumentError(f"not a BSON document: length {len(view)} != declared {total}")
    out: dict[str, BsonValue] = {}
    pos = 4
    end = total - 1
    while pos < end:
        kind = view[pos]
        pos += 1
        nul = bytes(view[pos:end]).find(b"\x00")
        if nul < 0:
            raise InvalidArgumentError("not a BSON document: unterminated field name")
        name = bytes(view[pos : pos + nul]).decode()
        pos += nul + 1
        if kind == _STRING:
            (length,) = struct.unpack_from("<i", view, pos)
            pos += 4
            if length < 1 or pos + length > end or view[pos + length - 1] != 0:
                raise InvalidArgumentError(f"BSON field {name!r}: bad string length")
            out[name] = bytes(view[pos : pos + length - 1]).decode()
            pos += length
        elif kind == _INT32:
            (out[name],) = struct.unpack_from("<i", view, pos)
            pos += 4
        elif kind == _INT64:
            (out[name],) = struct.unpack_from("<q", view, pos)
            pos += 8
        else:
            raise InvalidArgumentError(f"BSON field {name!r}: unsupported element type {kind:#x}")
    if pos != end:
        raise InvalidArgumentError("not a BSON document: trailing bytes")
    return out
