"""The object cache API: ``ObjectRef`` and put/get/update/patch/delete of objects.

This module path is part of the wire format: Runner requests pickle
``flamepy.core.cache.ObjectRef`` by this name, so the class lives here.  The
function names and signatures are those of Flame's own SDK; each also has an
``*_async`` form for asyncio code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flamepy import _bson
from flamepy._cache.client import CacheClient, client_for
from flamepy._config import FlameClientTls, FlameContext
from flamepy._errors import InvalidArgumentError
from flamepy._pickle import register_wire_class

T = TypeVar("T")

ASYNC_WORKERS = 8
"""Threads that run blocking Flight calls for the ``*_async`` functions."""


@register_wire_class
@dataclass(frozen=True)
class ObjectRef:
    """A reference to an object in the cache: where, which key, which version."""

    endpoint: str
    key: str
    version: int = 0

    def encode(self) -> bytes:
        """BSON ``{endpoint, key, version}``, as Flame's SDK writes it."""
        return _bson.encode({"endpoint": self.endpoint, "key": self.key, "version": self.version})

    @classmethod
    def decode(cls, data: bytes) -> ObjectRef:
        """Parse BSON ``{endpoint, key, version}`` (version int32 or int64)."""
        doc = _bson.decode(bytes(data))
        if set(doc) != {"endpoint", "key", "version"}:
            raise InvalidArgumentError(
                f"not an ObjectRef: fields {sorted(doc)} != ['endpoint', 'key', 'version']"
            )
        endpoint, key, version = doc["endpoint"], doc["key"], doc["version"]
        if not (isinstance(endpoint, str) and isinstance(key, str) and isinstance(version, int)):
            raise InvalidArgumentError("not an ObjectRef: wrong field types")
        return cls(endpoint=endpoint, key=key, version=version)


def _default_client() -> CacheClient:
    from flamepy._embedded import resolve_cache_endpoint

    ctx = FlameContext()
    endpoint = resolve_cache_endpoint(ctx)
    tls = ctx.cache_tls
    return client_for(endpoint, tls.ca_file if tls else None)


def _client_of(ref: ObjectRef) -> CacheClient:
    ctx = FlameContext()
    tls = ctx.cache_tls
    return client_for(ref.endpoint, tls.ca_file if tls else None)


def _ref(result: tuple[str, str, int]) -> ObjectRef:
    return ObjectRef(endpoint=result[0], key=result[1], version=result[2])


def put_object(key_prefix: str, obj: Any) -> ObjectRef:
    """Store ``obj`` under ``<app>/<session>`` (new id) or at ``<app>/<session>/<id>``."""
    return _ref(_default_client().put(key_prefix, obj))


def put_encoded(key_prefix: str, payload: Any) -> ObjectRef:
    """Store an already encoded opaque payload (``FLM`` + body), as put_object would."""
    return _ref(_default_client().put_payload(key_prefix, payload, f"put_object({key_prefix})"))


def get_object(ref: ObjectRef, deserializer: Callable[[Any, list[Any]], Any] | None = None) -> Any:
    """Fetch an object; with ``deserializer``, call it as ``(base, [patches])``."""
    return _client_of(ref).get(ref.key, deserializer, ref.version)


def update_object(ref: ObjectRef, new_obj: Any) -> ObjectRef:
    """Replace the object (its patches are dropped); the version goes up by one."""
    return _ref(_client_of(ref).put(ref.key, new_obj))


def patch_object(ref: ObjectRef, delta: Any) -> ObjectRef:
    """Append ``delta`` to the object; ``get_object`` with a deserializer sees it."""
    return _ref(_client_of(ref).patch(ref.key, delta))


def upload_object(key_or_prefix: str, file_path: str) -> ObjectRef:
    """Upload a file's bytes, streamed in 1 MiB chunks."""
    return _ref(_default_client().upload(key_or_prefix, file_path))


def download_object(ref: ObjectRef, dest_path: str) -> None:
    """Download an uploaded file to ``dest_path`` (written atomically)."""
    _client_of(ref).download(ref.key, dest_path)


def delete_objects(key_prefix: str) -> None:
    """Delete one object, a session's objects (``<app>/<session>``) or ``<app>/*``."""
    _default_client().delete(key_prefix)


# -- asyncio forms --------------------------------------------------------------------

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(
            ASYNC_WORKERS, thread_name_prefix="flamepy-cache"
        )
    return _pool


async def _in_pool(fn: Callable[..., T], *args: Any) -> T:
    call = functools.partial(fn, *args)
    return await asyncio.get_running_loop().run_in_executor(_executor(), call)


async def put_object_async(key_prefix: str, obj: Any) -> ObjectRef:
    return await _in_pool(put_object, key_prefix, obj)


async def get_object_async(
    ref: ObjectRef, deserializer: Callable[[Any, list[Any]], Any] | None = None
) -> Any:
    return await _in_pool(get_object, ref, deserializer)


async def update_object_async(ref: ObjectRef, new_obj: Any) -> ObjectRef:
    return await _in_pool(update_object, ref, new_obj)


async def patch_object_async(ref: ObjectRef, delta: Any) -> ObjectRef:
    return await _in_pool(patch_object, ref, delta)


async def upload_object_async(key_or_prefix: str, file_path: str) -> ObjectRef:
    return await _in_pool(upload_object, key_or_prefix, file_path)


async def download_object_async(ref: ObjectRef, dest_path: str) -> None:
    await _in_pool(download_object, ref, dest_path)


async def delete_objects_async(key_prefix: str) -> None:
    client = _default_client()
    if client.in_process and key_prefix.count("/") == 2:
        # One object in this process's own cache: a few file renames, done at once.
        # No thread hop, and the file is back in the pool before the caller goes on
        # (the Runner deletes a call's staged arguments as its result comes in).
        client.delete(key_prefix)
        return
    await _in_pool(client.delete, key_prefix)


# The cache's wire constants, under the names Flame's SDK 0.6 gives them
# (flame-cache.md: schema metadata, logical types, reply fields).
CACHE_FORMAT_METADATA_KEY = b"flame.cache.format"
CACHE_VERSION_METADATA_KEY = b"flame.cache.version"
CACHE_LOGICAL_TYPE_METADATA_KEY = b"flame.cache.logical_type"
CACHE_FORMAT_ARROW_TABLE = b"arrow-table-v1"
CACHE_FORMAT_OPAQUE = b"opaque-v1"
LOGICAL_TYPE_DATASET = "dataset"
LOGICAL_TYPE_PANDAS_DATAFRAME = "pandas.dataframe"
LOGICAL_TYPE_POLARS_DATAFRAME = "polars.dataframe"
LOGICAL_TYPE_PYARROW_RECORD_BATCH = "pyarrow.record_batch"
LOGICAL_TYPE_PYARROW_TABLE = "pyarrow.table"
OBJECT_FIELD_DATA = "data"
OBJECT_FIELD_VERSION = "version"
OBJECT_RESPONSE_FIELD_KIND = "kind"
WILDCARD_SESSION = "*"
"""The session part of ``<app>/*``, valid only for delete."""

__all__ = [
    "CACHE_FORMAT_ARROW_TABLE",
    "CACHE_FORMAT_METADATA_KEY",
    "CACHE_FORMAT_OPAQUE",
    "CACHE_LOGICAL_TYPE_METADATA_KEY",
    "CACHE_VERSION_METADATA_KEY",
    "LOGICAL_TYPE_DATASET",
    "LOGICAL_TYPE_PANDAS_DATAFRAME",
    "LOGICAL_TYPE_POLARS_DATAFRAME",
    "LOGICAL_TYPE_PYARROW_RECORD_BATCH",
    "LOGICAL_TYPE_PYARROW_TABLE",
    "OBJECT_FIELD_DATA",
    "OBJECT_FIELD_VERSION",
    "OBJECT_RESPONSE_FIELD_KIND",
    "WILDCARD_SESSION",
    "FlameClientTls",
    "FlameContext",
    "ObjectRef",
    "delete_objects",
    "delete_objects_async",
    "download_object",
    "download_object_async",
    "get_object",
    "get_object_async",
    "patch_object",
    "patch_object_async",
    "put_object",
    "put_object_async",
    "update_object",
    "update_object_async",
    "upload_object",
    "upload_object_async",
]
