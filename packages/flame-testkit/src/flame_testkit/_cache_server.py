"""The Arrow Flight object cache of the testkit (flame-cache.md §1-§4, §11).

:class:`CacheFlightServer` speaks the protocol over an
:class:`~flame_testkit._cache_store.ObjectStore`; :class:`CacheServer` binds,
advertises and stops it.  Store errors become the gRPC status the spec asks for.
What a raw ``pyarrow.flight.FlightClient`` then sees, as found by experiment
with pyarrow 26:

=============================================  ================  =========================
Raised in the handler                          gRPC status       Client-side exception
=============================================  ================  =========================
``pa.ArrowInvalid`` (or ``ValueError``)        INVALID_ARGUMENT  ``pa.ArrowInvalid``
``pa.ArrowKeyError`` (or ``KeyError``)         NOT_FOUND         ``pa.ArrowKeyError``
``flight.FlightInternalError``                 INTERNAL          ``FlightInternalError``
``NotImplementedError``                        UNIMPLEMENTED     ``ArrowNotImplementedError``
``flight.FlightServerError``, other errors     UNKNOWN           ``FlightServerError``
=============================================  ================  =========================

pyarrow's Flight server has no way to answer RESOURCE_EXHAUSTED (no exception
maps to it; ``MemoryError`` and ``pa.ArrowMemoryError`` become UNKNOWN), so the
store's :class:`~flame_testkit._cache_store.ResourceExhausted` errors are sent
as UNAVAILABLE ("try again later"), with a message that starts "resource
exhausted:" and names the limit and its setting.

Size limit: an opaque base or patch travels as one Binary cell (32-bit offsets),
so it must be smaller than 2 GiB; larger uploads are refused at PUT time with
INVALID_ARGUMENT.  Multi-GB payloads go as native tables (many batches).  gRPC's
own per-message limit (also about 2 GiB, headers included) applies on top.

Memory bounds: the store's budget (``max_memory``) and its limit for one object
(``max_object_bytes``, INVALID_ARGUMENT, checked while an upload arrives so an
oversized one is refused early), and at most ``max_uploads`` DoPut streams at
once: a further one waits up to ``upload_wait`` seconds for a slot, then fails
UNAVAILABLE.  The uploads in progress hold at most ``max_uploads`` times
``max_object_bytes`` beyond the budget.  An upload is held once: a single-batch
upload is kept as it came, and a chunked one (flamepy sends 8 MiB chunks) is
gathered into one mapping grown in place, each chunk let go once copied.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from flame_testkit._auth import CacheTokenCheck
from flame_testkit._cache_disk import (
    DiskStorage,
    binary_chunks,
    check_opaque_schema,
    parse_storage_url,
)
from flame_testkit._cache_local import INLINE_LIMIT as LOCAL_INLINE_LIMIT
from flame_testkit._cache_local import LocalTransfer, default_parent
from flame_testkit._cache_store import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_MAX_OBJECT_BYTES,
    CacheError,
    EvictionPolicy,
    GetResult,
    InvalidArgument,
    NativeTable,
    ObjectStore,
    Opaque,
    ResourceExhausted,
    Unavailable,
    binary_cell,
    is_native,
    parse_key,
)
from flamepy._bson import decode, encode
from flamepy._cache.codec import uint64_array, utf8_array

log = logging.getLogger("flame_testkit.cache")

DEFAULT_HOST = "127.0.0.1"
MAX_OPAQUE_BYTES = 2**31 - 1
DEFAULT_MAX_UPLOADS = 4
"""DoPut streams served at once; further ones wait for a slot."""
DEFAULT_UPLOAD_WAIT = 60.0
"""Seconds a DoPut waits for an upload slot before it fails (UNAVAILABLE)."""
MAX_UPLOADS_SETTING = "max_uploads; LocalClusterConfig.cache_max_uploads"
GATHER_MIN_BYTES = 1 << 20
"""A chunked opaque upload from this size on is gathered in one growing mapping;
smaller ones are joined (a mapping each would waste pages and map entries)."""
PATCH_PREFIX = b"PATCH:"
REPLY_COMPRESSION = "zstd"
"""Reply IPC bodies are ZSTD-compressed, as by Flame's own cache (flame-cache §3)."""
RESPONSE_SCHEMA = pa.schema(
    [
        pa.field("version", pa.uint64(), nullable=False),
        pa.field("kind", pa.utf8(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
)
"""The DoGet reply schema of opaque objects and of "not modified" (§3)."""

LOCAL_ACTIONS = {
    "LOCAL_DIR": "This server's transfer directory and token (same-host transfers)",
    "LOCAL_PUT": "Adopt a payload file written in the transfer directory as an object",
    "LOCAL_GET": "An object as a file of the transfer directory, inline, or 'use DoGet'",
}
"""flame-testkit's same-host transfer actions (see ``_cache.local``)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def to_flight_error(exc: CacheError) -> Exception:
    """The exception a Flight handler raises so the client gets ``exc.status``."""
    kinds: dict[str, type[Exception]] = {
        "INVALID_ARGUMENT": pa.ArrowInvalid,
        "NOT_FOUND": pa.ArrowKeyError,
        "RESOURCE_EXHAUSTED": flight.FlightUnavailableError,  # see the module doc
        "UNAVAILABLE": flight.FlightUnavailableError,
    }
    error: Exception = kinds.get(exc.status, flight.FlightInternalError)(str(exc))
    return error


def _mapped(handler: Callable[_P, _R]) -> Callable[_P, _R]:
    """Map store errors to their status and anything unexpected to INTERNAL."""

    @functools.wraps(handler)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return handler(*args, **kwargs)
        except CacheError as exc:
            log.debug("%s: %s %s", handler.__name__, exc.status, exc)
            raise to_flight_error(exc) from None
        except (flight.FlightError, NotImplementedError):
            raise
        except Exception as exc:
            log.exception("%s failed", handler.__name__)
            raise flight.FlightInternalError(f"{type(exc).__name__}: {exc}") from None

    return wrapper


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"{what} is not UTF-8") from None


def parse_ticket(raw: bytes) -> tuple[str, int]:
    """``<key>:<client_version>`` split on the first ``:``; no ``:`` means version 0."""
    key, sep, version = _text(raw, "ticket").partition(":")
    if not sep:
        return key, 0
    if not (version.isascii() and version.isdigit()) or int(version) >= 2**64:
        raise InvalidArgument(f"invalid version {version!r} in ticket")
    return key, int(version)


class CacheFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    """The Flight service (the "servicer") over an :class:`ObjectStore`.

    It serves as soon as it is constructed; ``endpoint`` is the advertised
    ``grpc://host:port`` (``grpc+tls://`` with TLS, ``grpc+unix:///path`` on a Unix
    socket) put in PutResults and FlightInfos.  With ``token``, every call must
    carry it (``_auth.CacheTokenCheck``).  At most ``max_uploads`` DoPut streams
    are served at once; a further one waits ``upload_wait`` seconds for a slot.
    """

    def __init__(
        self,
        store: ObjectStore,
        host: str = DEFAULT_HOST,
        port: int = 0,
        tls: tuple[bytes, bytes] | None = None,
        compression: str | None = REPLY_COMPRESSION,
        local: LocalTransfer | None = None,
        *,
        unix_path: str | None = None,
        token: str | None = None,
        max_uploads: int = DEFAULT_MAX_UPLOADS,
        upload_wait: float = DEFAULT_UPLOAD_WAIT,
    ) -> None:
        if max_uploads <= 0:
            raise ValueError(f"max_uploads must be positive, got {max_uploads}")
        if upload_wait < 0:
            raise ValueError(f"upload_wait cannot be negative, got {upload_wait}")
        self.store = store
        self.local = local
        self.max_opaque_bytes = MAX_OPAQUE_BYTES
        self.max_uploads = max_uploads
        self.upload_wait = upload_wait
        self._upload_slots = _Slots(max_uploads)
        self.ipc_options = pa.ipc.IpcWriteOptions(compression=compression)
        middleware = {"auth": CacheTokenCheck(token)} if token is not None else None
        if unix_path is not None:
            location = f"grpc+unix://{unix_path}"
            super().__init__(location, middleware=middleware)
            self.endpoint = location
            return
        scheme = "grpc+tls" if tls is not None else "grpc"
        address = f"[{host}]" if ":" in host else host
        certificates = [flight.CertKeyPair(tls[0], tls[1])] if tls is not None else None
        super().__init__(
            f"{scheme}://{address}:{port}", tls_certificates=certificates, middleware=middleware
        )
        self.endpoint = f"{scheme}://{address}:{self.port}"

    @_mapped
    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        # pyarrow shows the path of PATH descriptors only and the command of CMD
        # ones only, so "a path present on a PATCH command wins" (§4.2) cannot be
        # observed here: a CMD descriptor always patches the key in its command.
        path = descriptor.path or []
        command = (
            descriptor.command if descriptor.descriptor_type == flight.DescriptorType.CMD else None
        )
        is_patch = command is not None and command.startswith(PATCH_PREFIX)
        if path:
            target = _text(path[0], "descriptor path")
        elif command is not None and is_patch:
            target = _text(command[len(PATCH_PREFIX) :], "PATCH command")
        else:
            raise InvalidArgument("DoPut needs a PATH descriptor or a PATCH:<key> command")
        parse_key(target, full=is_patch)  # refuse a bad key before reading the upload
        if not self._upload_slots.acquire(self.upload_wait):
            raise ResourceExhausted(
                f"resource exhausted: {self.max_uploads} uploads are in progress, the cache's "
                f"limit ({MAX_UPLOADS_SETTING}), and none ended within {self.upload_wait:g} s: "
                "retry later, or raise the limit"
            )
        try:
            schema = reader.schema
            if is_native(schema):
                if is_patch:
                    raise InvalidArgument("native tabular deltas are not supported")
                key, version = self.store.put(target, self._read_native(reader))
            elif is_patch:
                key, version = self.store.patch(target, self._read_opaque(reader))
            else:
                key, version = self.store.put(target, self._read_opaque(reader))
        finally:
            self._upload_slots.release()
        document: dict[str, str | int] = {"endpoint": self.endpoint, "key": key, "version": version}
        writer.write(pa.py_buffer(encode(document, int64_fields=frozenset({"version"}))))

    @property
    def uploads_in_progress(self) -> int:
        """DoPut streams holding a slot now."""
        return self._upload_slots.taken

    def refuse_uploads(self) -> None:
        """Fail the DoPut calls waiting for a slot, and any later one (stopping):
        a shutdown then waits only for the uploads already being read."""
        self._upload_slots.close()

    def _read_opaque(self, reader: flight.MetadataRecordBatchReader) -> Opaque:
        """All ``data`` cells of the upload, concatenated, read batch by batch.

        Held once: a single large cell is kept as it came; several are copied,
        one by one as they arrive, into a :class:`_Gathered` mapping (joined into
        bytes when small), and each batch is let go once copied."""
        check_opaque_schema(reader.schema)
        first: pa.Buffer | None = None
        small: list[pa.Buffer] = []
        gathered: _Gathered | None = None
        size = rows = batches = 0
        for batch in _batches(reader):
            batches += 1
            rows += batch.num_rows
            for chunk in binary_chunks(batch.column(1)):
                size += chunk.size
                if size > self.max_opaque_bytes:
                    raise InvalidArgument(
                        f"opaque object larger than {self.max_opaque_bytes} bytes: one Binary "
                        "cell cannot hold it; upload it as a native table instead"
                    )
                self.store.check_size(size, partial=True)
                if gathered is not None:
                    gathered.append(chunk)
                elif first is None:
                    first = chunk
                else:
                    small.append(chunk)
                    if size >= GATHER_MIN_BYTES:
                        gathered = _Gathered(2 * size)
                        for piece in (first, *small):
                            gathered.append(piece)
                        first = None
                        small.clear()
            del batch
        if rows == 0:
            raise InvalidArgument(f"no data: the upload had {batches} batch(es) and no row")
        if gathered is not None:
            return gathered.finish()
        if first is not None and not small and size >= GATHER_MIN_BYTES:
            return first  # held as it came: the message it arrived in is this cell
        # A small cell may share its memory with more of what gRPC received: copied.
        return b"".join(memoryview(c) for c in (first, *small) if c is not None)

    def _read_native(self, reader: flight.MetadataRecordBatchReader) -> NativeTable:
        """The upload as it came; zero batches or zero rows make an empty table."""
        batches: list[pa.RecordBatch] = []
        size = 0
        for batch in _batches(reader):
            size += int(batch.nbytes)
            self.store.check_size(size, partial=True)
            batches.append(batch)
        return NativeTable(reader.schema, tuple(batches))

    @_mapped
    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> Any:
        key, client_version = parse_ticket(ticket.ticket)
        result = self.store.get(key, client_version)
        log.debug("get %s at client version %d: %s", key, client_version, result.kind)
        if isinstance(result.base, NativeTable):
            table = result.base
            source = pa.RecordBatchReader.from_batches(table.schema, table.batches)
            return flight.RecordBatchStream(source, options=self.ipc_options)
        return flight.GeneratorStream(RESPONSE_SCHEMA, _rows(result), options=self.ipc_options)

    @_mapped
    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Any:
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == "DELETE":
            self.store.delete(_text(body, "DELETE body"))
            return [flight.Result(b"OK")]
        if self.local is not None and action.type in LOCAL_ACTIONS:
            return self._local_action(self.local, action.type, body)
        known = "DELETE" if self.local is None else f"DELETE, {', '.join(LOCAL_ACTIONS)}"
        raise InvalidArgument(f"unknown action {action.type!r}; supported: {known}")

    def list_actions(self, context: flight.ServerCallContext) -> list[flight.ActionType]:
        actions = [
            flight.ActionType("DELETE", "Delete <app>/<session>/<id>, <app>/<session> or <app>/*")
        ]
        if self.local is not None:
            actions += [flight.ActionType(name, text) for name, text in LOCAL_ACTIONS.items()]
        return actions

    def _local_action(self, local: LocalTransfer, kind: str, body: bytes) -> list[flight.Result]:
        """The same-host transfer actions (``_cache.local``)."""
        if kind == "LOCAL_DIR":
            return [flight.Result(encode({"dir": str(local.dir), "token": local.token}))]
        doc = _bson_body(body, kind)
        if kind == "LOCAL_PUT":
            target, name = _str_field(doc, "target", kind), _str_field(doc, "file", kind)
            parse_key(target)  # refuse a bad key before taking the file
            buffer = local.adopt(name)
            if buffer.size > self.max_opaque_bytes:
                raise InvalidArgument(f"opaque object larger than {self.max_opaque_bytes} bytes")
            key, version = self.store.put(target, buffer)
            reply: dict[str, str | int] = {
                "endpoint": str(self.endpoint),
                "key": key,
                "version": version,
            }
            return [flight.Result(encode(reply, int64_fields=frozenset({"version"})))]
        key = _str_field(doc, "key", kind)
        asked = doc.get("version", 0)
        if not isinstance(asked, int) or asked < 0:
            raise InvalidArgument(f"{kind}: version must be a non-negative integer")
        result = self.store.get(key, asked)
        if result.kind == "not_modified":
            return [flight.Result(encode({"mode": "not_modified"}))]
        base = result.base
        if result.kind != "full" or result.patches or base is None or isinstance(base, NativeTable):
            return [flight.Result(encode({"mode": "flight"}))]
        version = result.base_version
        mapped = local.file_of(base)
        if mapped is not None:
            head = encode({"mode": "file", "version": version, "file": mapped})
            return [flight.Result(head)]
        if len(base) <= LOCAL_INLINE_LIMIT:
            head = encode({"mode": "inline", "version": version})
            return [flight.Result(head), flight.Result(base)]
        return [flight.Result(encode({"mode": "flight"}))]

    @_mapped
    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        path = descriptor.path or []
        if not path:
            raise InvalidArgument("GetFlightInfo needs a PATH descriptor")
        key = "/".join(_text(p, "descriptor path") for p in path)
        return self._info(key, self.store.native_schema(key), -1)

    @_mapped
    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Any:
        return [self._info(item.key, None, item.size) for item in self.store.listing()]

    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        return flight.SchemaResult(RESPONSE_SCHEMA)

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        raise NotImplementedError("DoExchange is not implemented by the object cache")

    def _info(self, key: str, schema: pa.Schema | None, total_bytes: int) -> flight.FlightInfo:
        endpoint = flight.FlightEndpoint(key.encode(), [flight.Location(self.endpoint)])
        descriptor = flight.FlightDescriptor.for_path(key)
        return flight.FlightInfo(schema, descriptor, [endpoint], -1, total_bytes)


class _Slots:
    """A counting limit whose waiters a close releases at once (UNAVAILABLE)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self, timeout: float) -> bool:
        """Take a slot within ``timeout`` seconds; False when none came free."""
        with self._cond:
            free = self._cond.wait_for(lambda: self._closed or self.taken < self.limit, timeout)
            if self._closed:
                raise Unavailable("the object cache is shutting down: upload refused")
            if not free:
                return False
            self.taken += 1
            return True

    def release(self) -> None:
        with self._cond:
            self.taken -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Gathered:
    """Bytes appended into one private anonymous mapping that grows in place.

    On Linux ``mmap.resize`` is ``mremap``, which moves page tables, not bytes, and
    pages never written cost no memory: gathering N bytes holds N bytes, where a
    list of chunks joined at the end holds 2N at the join.  Elsewhere a resize may
    fail; the bytes are then copied into a larger mapping (as ``realloc`` would)."""

    def __init__(self, capacity: int) -> None:
        self._map = mmap.mmap(-1, max(capacity, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE)
        self.size = 0

    def append(self, chunk: pa.Buffer) -> None:
        end = self.size + chunk.size
        if end > len(self._map):
            self._grow(max(end, 2 * len(self._map)))
        self._map[self.size : end] = memoryview(chunk)
        self.size = end

    def _grow(self, capacity: int) -> None:
        try:
            self._map.resize(capacity)
        except (OSError, SystemError):  # no mremap here
            bigger = mmap.mmap(-1, capacity, flags=mmap.MAP_PRIVATE)
            bigger[: self.size] = self._map[: self.size]
            self._map.close()
            self._map = bigger

    def finish(self) -> pa.Buffer:
        """The bytes gathered, as a buffer over the mapping (unmapped when it goes)."""
        if 0 < self.size < len(self._map):
            with contextlib.suppress(OSError, SystemError):
                self._map.resize(self.size)  # hand back the tail's address space
        return pa.py_buffer(self._map)[: self.size]


def _bson_body(body: bytes, kind: str) -> dict[str, Any]:
    try:
        return dict(decode(body))
    except Exception:
        raise InvalidArgument(f"{kind}: the body is not a BSON document") from None


def _str_field(doc: dict[str, Any], name: str, kind: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise InvalidArgument(f"{kind}: the body needs a string {name!r}")
    return value


def _batches(reader: flight.MetadataRecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The upload's batches; none is held here once the next is asked for."""
    while True:
        try:
            data = reader.read_chunk().data
        except StopIteration:
            return
        if data is not None:
            yield data
            del data


def _rows(result: GetResult) -> Iterator[pa.RecordBatch]:
    """One record batch per row: the base (full replies) then the patches."""
    base = result.base
    if result.kind == "full" and base is not None and not isinstance(base, NativeTable):
        yield _row(result.base_version, "base", base)
    for patch in result.patches:
        yield _row(patch.version, "patch", patch.data)


def _row(version: int, kind: str, data: Opaque) -> pa.RecordBatch:
    columns = [uint64_array(version), utf8_array(kind), binary_cell(data)]
    return pa.RecordBatch.from_arrays(columns, schema=RESPONSE_SCHEMA)


class CacheServer:
    """A local object cache on ``host:port`` (port 0 picks a free one), or on the
    Unix socket ``unix_path``.

    ``storage`` is ``None``/``"none"`` (memory only), a directory or an
    ``fs://``/``file://`` URL (§8); ``tls`` is ``(certificate chain PEM, private
    key PEM)``; ``token``, when set, is required with every call.  The advertised
    endpoint uses the bind host (or the socket path).
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        storage: str | os.PathLike[str] | None = None,
        max_memory: int = DEFAULT_MAX_MEMORY,
        max_objects: int | None = None,
        tls: tuple[bytes, bytes] | None = None,
        eviction: EvictionPolicy = "lru",
        compression: str | None = REPLY_COMPRESSION,
        local_transfer: bool = False,
        *,
        unix_path: str | None = None,
        token: str | None = None,
        spill: str | os.PathLike[str] | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        max_uploads: int = DEFAULT_MAX_UPLOADS,
        upload_wait: float = DEFAULT_UPLOAD_WAIT,
        transfer_parent: str | os.PathLike[str] | None = None,
    ) -> None:
        """``spill``: without ``storage``, a directory where evicted objects are
        written instead of being dropped (and read back from).
        ``max_memory``: the memory budget of the objects held (``_cache_store``);
        ``max_object_bytes``: the largest object accepted; ``max_uploads``: DoPut
        streams served at once, a further one waiting ``upload_wait`` seconds.
        ``transfer_parent``: where the transfer directory goes (default
        ``$FLAME_LOCAL_TRANSFER_DIR``, else ``/dev/shm``, see ``_cache.local``).
        ``compression``: of reply IPC bodies, ``"zstd"`` as Flame's cache does
        (flame-cache §3); None sends them plain, which every IPC reader accepts.
        ``local_transfer``: offer same-host transfers through files in a directory
        on ``/dev/shm`` (``_cache.local``); clients elsewhere keep to Flight."""
        self.host = host
        self.compression = compression
        self.local_transfer = local_transfer
        self._local: LocalTransfer | None = None
        self._requested_port = port
        self.storage = parse_storage_url(storage)
        self.max_memory = max_memory
        self.max_object_bytes = max_object_bytes
        self.max_uploads = max_uploads
        self.upload_wait = upload_wait
        self.transfer_parent = transfer_parent
        self.max_objects = max_objects
        self.eviction: EvictionPolicy = eviction
        self._tls = tls
        self._unix_path = unix_path
        self._token = token
        self._spill = spill
        self._server: CacheFlightServer | None = None
        self._store: ObjectStore | None = None

    def start(self) -> None:
        """Load the storage (if any), bind and start serving."""
        if self._server is not None:
            raise RuntimeError("the cache server is already running")
        disk = DiskStorage(self.storage) if self.storage is not None else None
        spill = None
        if disk is None and self._spill is not None:
            spill = DiskStorage(self._spill, fsync=False)  # a spill, not a durable copy
        local = None
        if self.local_transfer:
            parent = self.transfer_parent
            local = LocalTransfer(default_parent() if parent is None else parent)
        try:
            store = ObjectStore(
                max_memory=self.max_memory,
                max_objects=self.max_objects,
                eviction=self.eviction,
                disk=disk,
                watcher=local,
                spill=spill,
                max_object_bytes=self.max_object_bytes,
            )
            self._server = CacheFlightServer(
                store,
                self.host,
                self._requested_port,
                self._tls,
                self.compression,
                local,
                unix_path=self._unix_path,
                token=self._token,
                max_uploads=self.max_uploads,
                upload_wait=self.upload_wait,
            )
        except BaseException:
            if local is not None:
                local.close()
            raise
        self._store = store
        self._local = local
        log.info("object cache listening on %s (storage: %s)", self.endpoint, self.storage)

    @property
    def endpoint(self) -> str:
        """The advertised endpoint, e.g. ``grpc://127.0.0.1:40123``."""
        if self._server is None:
            raise RuntimeError("the cache server is not running")
        return str(self._server.endpoint)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the cache server is not running")
        return int(self._server.port)

    @property
    def flight_server(self) -> CacheFlightServer:
        """The running Flight server (the servicer), e.g. to call it in-process."""
        if self._server is None:
            raise RuntimeError("the cache server is not running")
        return self._server

    @property
    def local_dir(self) -> str | None:
        """The transfer directory of same-host transfers, when they are on."""
        return str(self._local.dir) if self._local is not None else None

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            raise RuntimeError("the cache server has not been started")
        return self._store

    def stop(self) -> None:
        """Shut down and wait for the server; does nothing when not running."""
        server, self._server = self._server, None
        if server is not None:
            server.refuse_uploads()
            server.shutdown()
            server.wait()
            log.info("object cache on %s stopped", server.endpoint)
        local, self._local = self._local, None
        if local is not None:
            local.close()

    def __enter__(self) -> CacheServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
