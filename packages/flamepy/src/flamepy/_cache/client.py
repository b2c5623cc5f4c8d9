"""The Arrow Flight client of Flame's object cache (flame-cache.md §4, §9).

One :class:`CacheClient` per endpoint (reused), large payloads streamed in
chunks, and a client-side versioned cache that turns repeated gets into
conditional ones (not-modified and patch-only replies).  pyarrow's Flight
client is blocking; the async API runs these calls on a small bounded pool.
"""

from __future__ import annotations

import errno
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.flight as flight

from flamepy import _bson
from flamepy import _progress as progress
from flamepy._auth import flight_middleware, token_for
from flamepy._cache import inproc as _cache_inproc
from flamepy._cache.codec import (
    UPLOAD_SCHEMA,
    Native,
    binary_array,
    decode_native,
    decode_opaque,
    empty_batch,
    encode,
    encode_opaque,
    is_native_schema,
    native_upload_table,
    native_version,
    uint64_array,
)
from flamepy._cache.local import (
    LOCAL_MIN_BYTES,
    TransferDir,
    direct_size,
    is_loopback,
    object_file,
)
from flamepy._cache.maps import WRITER_MAPS
from flamepy._config import unix_socket_path
from flamepy._errors import (
    ConfigError,
    ConnectionFailedError,
    FlameError,
    FlameTimeoutError,
    InternalError,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
)

log = logging.getLogger("flamepy.cache")

TRANSFER_PROBE_TIMEOUT = 5.0
"""Seconds to wait for a cache's answer to LOCAL_DIR."""
UPLOAD_CHUNK = 8 * 1024 * 1024
"""Opaque payloads are sent as rows of at most this many bytes, one per message."""
FILE_CHUNK = 1024 * 1024
"""``upload_object`` sends files in 1 MiB rows, as Flame's own SDK does."""
MAX_OPAQUE = 2**31 - 1
"""A stored opaque object is one Binary cell (32-bit offsets) on GET."""
DEFAULT_CALL_TIMEOUT = 300.0
DEFAULT_LOCAL_CACHE_BYTES = 256 * 1024 * 1024
_ENTRY_LIMIT_FRACTION = 4  # a single object may use at most 1/4 of the local cache


@dataclass
class _Entry:
    version: int
    base: pa.Buffer | pa.Table
    patches: list[pa.Buffer] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        base = self.base.nbytes if isinstance(self.base, pa.Table) else self.base.size
        return int(base + sum(p.size for p in self.patches))


class _LocalCache:
    """Payloads by key, least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_LOCAL_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: _Entry) -> None:
        with self._lock:
            self._drop(key)
            if entry.nbytes * _ENTRY_LIMIT_FRACTION > self.max_bytes:
                return
            self._entries[key] = entry
            self._size += entry.nbytes
            while self._size > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def discard(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def discard_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k == prefix or k.startswith(prefix + "/")]:
                self._drop(key)

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= old.nbytes


def flight_location(endpoint: str) -> str:
    """``grpcs://`` becomes ``grpc+tls://``; a bare ``host:port`` is plaintext gRPC;
    ``grpc+unix:///path`` is a Unix socket."""
    if "://" not in endpoint:
        return f"grpc://{endpoint}"
    scheme, rest = endpoint.split("://", 1)
    scheme = scheme.lower()
    if scheme == "grpcs":
        return f"grpc+tls://{rest}"
    if scheme in ("grpc", "grpc+tcp", "grpc+tls"):
        return f"{scheme}://{rest}"
    if scheme == "grpc+unix":
        return f"grpc+unix://{unix_socket_path(endpoint)}"
    raise ConfigError(
        f"unsupported object cache endpoint {endpoint!r}: use grpc://host:port, "
        "grpcs://host:port or grpc+unix:///path/to/socket"
    )


def _server_message(exc: Exception) -> str:
    text = str(exc)
    marker = "with message: "
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.split(". Detail:", 1)[0].strip()


RESOURCE_EXHAUSTED_PREFIX = "resource exhausted:"
"""How the local cache words a refusal at a limit (sent as UNAVAILABLE: a Python
Flight server cannot send RESOURCE_EXHAUSTED)."""


def map_error(exc: Exception, what: str, endpoint: str) -> FlameError:
    """Translate a pyarrow/Flight error into a flamepy error (the cache boundary)."""
    message = f"{what}: {_server_message(exc)}"
    if isinstance(exc, flight.FlightUnavailableError):
        if _server_message(exc).startswith(RESOURCE_EXHAUSTED_PREFIX):
            return InvalidStateError(message)  # the cache is up, at one of its limits
        return ConnectionFailedError(
            f"{what}: the object cache at {endpoint} is unreachable or went away "
            f"({_server_message(exc)}); check FLAME_CACHE_ENDPOINT or cache.endpoint"
        )
    if isinstance(exc, (flight.FlightUnauthenticatedError, flight.FlightUnauthorizedError)):
        return ConfigError(
            f"{what}: the object cache at {endpoint} refused the request "
            f"({_server_message(exc)}); set FLAME_TOKEN_FILE (or FLAME_TOKEN) to its token"
        )
    if isinstance(exc, flight.FlightTimedOutError):
        return FlameTimeoutError(message)
    if isinstance(exc, pa.ArrowKeyError):
        return NotFoundError(message)
    if isinstance(exc, pa.ArrowInvalid):
        return InvalidArgumentError(message)
    return InternalError(message)


def validate_key(key: str, *, parts: tuple[int, ...], what: str) -> list[str]:
    """The SDK's own key rules (stricter than the server's), as a usage error."""
    components = key.split("/")
    if len(components) not in parts or any(not c for c in components):
        shapes = " or ".join({2: "<app>/<session>", 3: "<app>/<session>/<id>"}[n] for n in parts)
        raise InvalidArgumentError(f"invalid {what} {key!r}: expected {shapes}")
    for c in components:
        if ":" in c:
            raise InvalidArgumentError(
                f"invalid {what} {key!r}: ':' is not allowed in a key (the cache reads an "
                "object by the ticket '<key>:<version>', so it could never be read back); "
                "use another character, such as '-' or '_'"
            )
        if ".." in c or "\\" in c:
            raise InvalidArgumentError(
                f"invalid {what} {key!r}: components may not contain '..' or '\\'"
            )
    if components[0] == "*" or (len(components) == 3 and components[2] == "*"):
        raise InvalidArgumentError(
            f"invalid {what} {key!r}: '*' is only valid as <app>/* in deletes"
        )
    return components


class CacheClient:
    """A Flight connection to one object cache endpoint."""

    def __init__(
        self,
        endpoint: str,
        *,
        ca_file: str | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        local_cache: _LocalCache | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.location = flight_location(endpoint)
        self.timeout = timeout
        self.local = local_cache or _LocalCache()
        root = None
        if ca_file:
            try:
                root = Path(ca_file).expanduser().read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the cache CA file {ca_file}: {exc.strerror}; "
                    "fix cache.tls.ca_file in flame.yaml or FLAME_CA_FILE"
                ) from exc
        self._client = flight.FlightClient(
            self.location,
            tls_root_certs=root,
            middleware=flight_middleware(token_for(endpoint)),
            generic_options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ],
        )
        self._transfer_lock = threading.Lock()
        self._transfer_known = False
        self._transfer: TransferDir | None = None

    def close(self) -> None:
        self._client.close()
        WRITER_MAPS.prune()  # a closed cache may have taken its transfer files along

    # -- same-host transfers (_cache.local) -------------------------------------------

    def transfer_dir(self) -> TransferDir | None:
        """The cache's transfer directory, when it offers one this host shares.

        A clear no (the action is unknown, as at Flame's cache, or the directory is
        not one we can trust) is remembered; a failure to ask is not, and the next
        large put or get asks again."""
        with self._transfer_lock:
            if self._transfer_known:
                return self._transfer
            if not is_loopback(self.endpoint):
                self._transfer_known = True
                return None
            try:
                results = self._do_action(flight.Action("LOCAL_DIR", b""), TRANSFER_PROBE_TIMEOUT)
                doc = _bson.decode(results[0].body.to_pybytes()) if results else {}
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                log.debug("%s offers no same-host transfers: %s", self.endpoint, exc)
                self._transfer_known = True
                return None
            except Exception as exc:  # unreachable or slow: ask again later
                log.debug("cannot ask %s for same-host transfers: %s", self.endpoint, exc)
                return None
            self._transfer = TransferDir.verified(doc.get("dir"), doc.get("token"))
            self._transfer_known = True
            return self._transfer

    @property
    def in_process(self) -> bool:
        """Whether this endpoint's server runs in this process (``_cache.inproc``)."""
        return _cache_inproc.lookup(self.location) is not None

    def _do_action(
        self, action: flight.Action, timeout: float | None = None
    ) -> list[flight.Result]:
        """``action``'s results: from the server itself when it runs in this
        process (``_cache.inproc``), else over Flight."""
        server = _cache_inproc.lookup(self.location)
        if server is not None:
            return list(server.do_action(None, action))
        return list(self._client.do_action(action, self._options(timeout)))

    def _forget_transfer_dir(self) -> None:
        """The directory went away (the cache restarted): ask again next time."""
        with self._transfer_lock:
            self._transfer_known = False
            self._transfer = None

    def _action(self, kind: str, doc: dict[str, Any]) -> tuple[dict[str, Any], list[pa.Buffer]]:
        """One of the transfer actions: its BSON head and the further result bodies."""
        bodies = [r.body for r in self._do_action(flight.Action(kind, _bson.encode(doc)))]
        try:
            head = _bson.decode(bodies[0].to_pybytes())
        except Exception as exc:
            raise InternalError(f"the object cache sent a malformed {kind} reply") from exc
        return head, bodies[1:]

    def _written(self, where: TransferDir, write: Callable[[], str | None]) -> str | None:
        """The name ``write()`` gave, or None when the file could not be written."""
        try:
            return write()
        except OSError as exc:
            log.debug("cannot write a transfer file in %s (%s); using Flight", where.path, exc)
            if exc.errno == errno.ENOENT:
                self._forget_transfer_dir()
            return None

    def _put_file(self, where: TransferDir, key: str, payload: pa.Buffer) -> dict[str, Any] | None:
        """LOCAL_PUT of ``payload``; None when the file cannot be written (then Flight)."""
        name = self._written(where, lambda: where.write(payload))
        return None if name is None else self._adopt(where, key, name)

    def _adopt(self, where: TransferDir, key: str, name: str) -> dict[str, Any]:
        try:
            head, _ = self._action("LOCAL_PUT", {"target": key, "file": name})
        except BaseException:
            where.discard(name)
            raise
        if not {"endpoint", "key", "version"} <= head.keys():
            raise InternalError(f"the object cache's LOCAL_PUT reply lacks a field: {head}")
        return head

    def _put_value(self, where: TransferDir, key: str, obj: Any) -> tuple[str, str, int] | None:
        """``obj`` encoded straight into a transfer file and adopted; None when it is
        not such a value or the file cannot be written (then the usual put)."""
        name = self._written(where, lambda: where.write_value(obj))
        if name is None:
            return None
        # No copy for the local cache: a get of it maps the file (see get_entry).
        return self._remember(self._adopt(where, key, name), None)

    def _remember(
        self, result: dict[str, Any], base: pa.Buffer | pa.Table | None
    ) -> tuple[str, str, int]:
        """The (endpoint, key, version) of a PutResult; what was put (when at hand)
        is kept in the local cache, so a get of our own put moves no data."""
        ref = (str(result["endpoint"]), str(result["key"]), int(result["version"]))
        if base is not None:
            self.local.put(ref[1], _Entry(version=ref[2], base=base))
        else:
            self.local.discard(ref[1])  # an older version's copy is of no use now
        return ref

    def _get_file(
        self, where: TransferDir, key: str, asked: int
    ) -> _Entry | Literal["not_modified"] | None:
        """LOCAL_GET: an entry, ``"not_modified"``, or None (then Flight)."""
        head, rest = self._action("LOCAL_GET", {"key": key, "version": asked})
        mode = head.get("mode")
        version = head.get("version")
        if mode == "not_modified":
            return "not_modified"
        if mode == "inline" and isinstance(version, int) and len(rest) == 1:
            entry = _Entry(version, rest[0])
            self.local.put(key, entry)
            return entry
        if mode == "file" and isinstance(version, int) and isinstance(head.get("file"), str):
            buffer = where.map(str(head["file"]))
            return None if buffer is None else self._mapped_entry(key, version, buffer)
        return None

    def _mapped_entry(self, key: str, version: int, buffer: pa.Buffer) -> _Entry:
        """An entry read from the object's file.  It is not kept in the local cache:
        a kept mapping would pin the file, which then could not be reused once the
        object is dropped (every later write would take fresh memory), and mapping
        it again costs a fraction of a millisecond."""
        self.local.discard(key)  # an older copy is of no use now
        return _Entry(version, buffer)

    def _get_named(
        self, where: TransferDir, key: str, version: int, cached: _Entry | None
    ) -> _Entry | None:
        """The object from its file, found by the name it has while ``version`` is
        current and unpatched; None when there is no such file (then ask)."""
        name = object_file(key, version)
        if cached is not None and cached.version == version and not cached.patches:
            return cached if where.has(name) else None
        buffer = where.map(name)
        return None if buffer is None else self._mapped_entry(key, version, buffer)

    def _options(self, timeout: float | None = None) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(timeout=timeout or self.timeout)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except FlameError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise map_error(exc, what, self.endpoint) from exc

    # -- writes -----------------------------------------------------------------------

    def _do_put(
        self,
        descriptor: flight.FlightDescriptor,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
    ) -> dict[str, Any]:
        writer, reader = self._client.do_put(descriptor, schema, self._options())
        try:
            for batch in batches:
                writer.write_batch(batch)
            writer.done_writing()
            meta = reader.read()
        finally:
            writer.close()
        if meta is None:
            raise InternalError("the object cache sent no PutResult")
        return _bson.decode(meta.to_pybytes())

    @staticmethod
    def _opaque_batches(payload: pa.Buffer, chunk: int) -> Iterator[pa.RecordBatch]:
        if payload.size > MAX_OPAQUE:
            raise InvalidArgumentError(
                f"object of {payload.size} bytes exceeds the cache's 2 GiB limit for one "
                "object; split it, or store it as a pyarrow Table"
            )
        version = uint64_array(0)
        offset = 0
        while True:
            piece = payload.slice(offset, min(chunk, payload.size - offset))
            data = binary_array(piece)
            yield pa.RecordBatch.from_arrays([version, data], schema=UPLOAD_SCHEMA)
            offset += piece.size
            if offset >= payload.size:
                return

    def put_payload(self, key: str, payload: Native | pa.Buffer, what: str) -> tuple[str, str, int]:
        validate_key(key, parts=(2, 3), what="object key or prefix")
        descriptor = flight.FlightDescriptor.for_path(key)
        result: dict[str, Any] | None = None
        if isinstance(payload, Native):
            table = native_upload_table(payload)
            batches = table.to_batches() or [empty_batch(table.schema)]
            result = self._call(what, lambda: self._do_put(descriptor, table.schema, iter(batches)))
        else:
            where = self.transfer_dir() if payload.size >= LOCAL_MIN_BYTES else None
            if where is not None and payload.size <= MAX_OPAQUE:
                result = self._call(what, lambda: self._put_file(where, key, payload))
            if result is None:
                result = self._call(
                    what,
                    lambda: self._do_put(
                        descriptor, UPLOAD_SCHEMA, self._opaque_batches(payload, UPLOAD_CHUNK)
                    ),
                )
        return self._remember(result, payload.table if isinstance(payload, Native) else payload)

    def put(self, key: str, obj: Any) -> tuple[str, str, int]:
        validate_key(key, parts=(2, 3), what="object key or prefix")
        what = f"put_object({key})"
        if direct_size(obj) >= LOCAL_MIN_BYTES:
            where = self.transfer_dir()
            if where is not None:
                ref = self._call(what, lambda: self._put_value(where, key, obj))
                if ref is not None:
                    return ref  # type: ignore[no-any-return]
        return self.put_payload(key, encode(obj), what)

    def patch(self, key: str, delta: Any) -> tuple[str, str, int]:
        validate_key(key, parts=(3,), what="object key")
        payload = encode_opaque(delta, tables_as_stream=True)
        descriptor = flight.FlightDescriptor.for_command(f"PATCH:{key}".encode())
        result = self._call(
            f"patch_object({key})",
            lambda: self._do_put(
                descriptor, UPLOAD_SCHEMA, self._opaque_batches(payload, UPLOAD_CHUNK)
            ),
        )
        return (str(result["endpoint"]), str(result["key"]), int(result["version"]))

    def upload(self, key: str, path: str | Path) -> tuple[str, str, int]:
        validate_key(key, parts=(2, 3), what="object key or prefix")
        source = Path(path)
        if not source.is_file():
            raise InvalidArgumentError(f"upload_object: {source} is not a file")

        shown = progress.bar(
            source.stat().st_size, f"uploading {source.name}", "B", minimum=progress.MIN_BYTES
        )

        def chunks() -> Iterator[pa.RecordBatch]:
            version = uint64_array(0)
            with source.open("rb") as fh:
                while True:
                    data = fh.read(FILE_CHUNK)
                    yield pa.RecordBatch.from_arrays(
                        [version, binary_array(data)], schema=UPLOAD_SCHEMA
                    )
                    if shown is not None:
                        shown.add(len(data))
                    if len(data) < FILE_CHUNK:
                        return

        descriptor = flight.FlightDescriptor.for_path(key)
        try:
            result = self._call(
                f"upload_object({key})", lambda: self._do_put(descriptor, UPLOAD_SCHEMA, chunks())
            )
        finally:
            if shown is not None:
                shown.close()
        return (str(result["endpoint"]), str(result["key"]), int(result["version"]))

    def delete(self, key: str) -> None:
        if key.endswith("/*"):
            validate_key(key[:-2] + "/x", parts=(2,), what="delete pattern")
        else:
            validate_key(key, parts=(2, 3), what="object key or prefix")

        def _delete() -> None:
            action = flight.Action("DELETE", key.encode())
            results = self._do_action(action)
            if not results:
                raise InternalError(f"delete_objects({key}): the object cache sent no reply")

        self._call(f"delete_objects({key})", _delete)
        self.local.discard_prefix(key[:-2] if key.endswith("/*") else key)

    # -- reads ------------------------------------------------------------------------

    def _fetch(self, key: str, client_version: int) -> tuple[pa.Schema, list[pa.RecordBatch]]:
        ticket = flight.Ticket(f"{key}:{client_version}".encode())
        reader = self._client.do_get(ticket, self._options())
        batches = []
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            batches.append(chunk.data)
        return reader.schema, batches

    def probe(self, key: str, version: int = 1) -> bool:
        """Whether ``key`` exists, asking conditionally at ``version`` (no data moves
        when the object is still at that version)."""
        try:
            self._call(f"probe({key})", lambda: self._fetch(key, version))
        except NotFoundError:
            return False
        return True

    def get_entry(self, key: str, version: int = 0) -> _Entry:
        """The object at ``key``; ``version`` (an ObjectRef's, 0 for none) lets a
        same-host reader map the object's file by name, without asking the server,
        while that version is the current one (``_cache_local.object_file``)."""
        what = f"get_object({key})"
        cached = self.local.get(key)
        asked = cached.version if cached is not None else 0
        # A native table is not served as a file: ask for it over Flight at once.
        native = cached is not None and isinstance(cached.base, pa.Table)
        where = None if native else self.transfer_dir()
        if where is not None:
            if version > 0:
                direct = self._get_named(where, key, version, cached)
                if direct is not None:
                    return direct
            found = self._call(what, lambda: self._get_file(where, key, asked))
            if found == "not_modified" and cached is not None:
                return cached
            if isinstance(found, _Entry):
                return found
        schema, batches = self._call(what, lambda: self._fetch(key, asked))
        if is_native_schema(schema):
            entry = _Entry(native_version(schema), pa.Table.from_batches(batches, schema=schema))
            self.local.put(key, entry)
            return entry
        rows = list(_rows(batches))
        if not rows:
            if cached is None:
                raise InternalError(f"{what}: the object cache returned no data")
            return cached
        if rows[0][1] == "base":
            if any(kind == "base" for _, kind, _ in rows[1:]):
                raise InternalError(f"{what}: reply has more than one base row")
            entry = _Entry(rows[0][0], rows[0][2], [data for _, _, data in rows[1:]])
        elif cached is not None and rows[0][0] == asked + 1:
            entry = _Entry(cached.version, cached.base, list(cached.patches))
            entry.patches.extend(data for _, _, data in rows)
        else:  # patches that do not follow our copy: fetch the whole object again
            return self._refetch(key)
        versions = [v for v, _, _ in rows]
        if versions != sorted(set(versions)):
            raise InternalError(f"{what}: patch versions are not unique and increasing")
        entry.version = versions[-1]
        self.local.put(key, entry)
        return entry

    def _refetch(self, key: str) -> _Entry:
        schema, batches = self._call(f"get_object({key})", lambda: self._fetch(key, 0))
        if is_native_schema(schema):
            return _Entry(native_version(schema), pa.Table.from_batches(batches, schema=schema))
        rows = list(_rows(batches))
        if not rows:
            raise InternalError(f"get_object({key}): the object cache returned no data")
        entry = _Entry(rows[-1][0], rows[0][2], [data for _, _, data in rows[1:]])
        self.local.put(key, entry)
        return entry

    def get(
        self,
        key: str,
        deserializer: Callable[[Any, list[Any]], Any] | None = None,
        version: int = 0,
    ) -> Any:
        """The object at ``key`` (``version``: see :meth:`get_entry`)."""
        validate_key(key, parts=(3,), what="object key")
        entry = self.get_entry(key, version)
        if isinstance(entry.base, pa.Table):
            return decode_native(entry.base)
        base = decode_opaque(entry.base)
        if deserializer is None:
            return base
        return deserializer(base, [decode_opaque(p) for p in entry.patches])

    def patches_since(self, key: str, version: int) -> tuple[int, Any, list[Any]]:
        """A follower's read (remote output), which keeps no copy: the object's version
        now, its base (decoded, when the reply carries it: always for ``version`` 0,
        else None) and its patches newer than ``version``, decoded."""
        validate_key(key, parts=(3,), what="object key")
        what = f"patches_since({key})"
        schema, batches = self._call(what, lambda: self._fetch(key, version))
        if is_native_schema(schema):
            raise InvalidArgumentError(f"{what}: {key} is a table, which has no patches")
        newest = version
        base = None
        values = []
        for row_version, kind, data in _rows(batches):
            newest = max(newest, row_version)
            if kind == "base":
                base = decode_opaque(data)
            elif row_version > version:
                values.append(decode_opaque(data))
        return newest, base, values

    def keys(self, prefix: str) -> list[str]:
        """Every key the cache lists (ListFlights) that starts with ``prefix``."""

        def _list() -> list[str]:
            found = []
            for info in self._client.list_flights(options=self._options()):
                # The ticket is the key (flame-cache.md 4.5); the descriptor may be empty.
                key = info.endpoints[0].ticket.ticket.decode() if info.endpoints else ""
                if not key and info.descriptor.path:
                    key = info.descriptor.path[0].decode()
                if key.startswith(prefix):
                    found.append(key)
            return found

        return list(self._call(f"list_objects({prefix})", _list))

    def download(self, key: str, dest: str | Path) -> None:
        validate_key(key, parts=(3,), what="object key")
        what = f"download_object({key})"
        target = Path(dest)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")

        def _download() -> int:
            reader = self._client.do_get(flight.Ticket(f"{key}:0".encode()), self._options())
            written = 0
            with tmp.open("wb") as fh:
                while True:
                    try:
                        chunk = reader.read_chunk()
                    except StopIteration:
                        return written
                    for _, kind, data in _rows([chunk.data]):
                        if kind == "patch":
                            raise InvalidArgumentError(f"{what}: the object has patches")
                        fh.write(data)
                        written += data.size

        try:
            if self._call(what, _download) == 0:
                raise InternalError(f"{what}: the object cache returned no data")
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)


def _rows(batches: list[pa.RecordBatch]) -> Iterator[tuple[int, str, pa.Buffer]]:
    """(version, kind, data) of each row, data as a zero-copy buffer."""
    first = True
    for batch in batches:
        names = batch.schema.names
        versions = batch.column(0).to_pylist()
        kinds = batch.column(names.index("kind")).to_pylist() if "kind" in names else None
        data = batch.column(names.index("data") if "data" in names else batch.num_columns - 1)
        offsets = data.buffers()[1]
        values = data.buffers()[2]
        bounds = pa.Array.from_buffers(
            pa.int32(), len(data) + 1, [None, offsets], offset=data.offset
        ).to_pylist()
        for i in range(len(data)):
            kind = kinds[i] if kinds is not None else ("base" if first else "patch")
            first = False
            size = bounds[i + 1] - bounds[i]
            piece = values.slice(bounds[i], size) if values is not None else pa.py_buffer(b"")
            yield int(versions[i]), str(kind), piece


_clients: dict[tuple[str, str | None], CacheClient] = {}
_clients_lock = threading.Lock()


def client_for(endpoint: str, ca_file: str | None = None) -> CacheClient:
    """The shared client of ``endpoint`` (one connection per endpoint)."""
    key = (flight_location(endpoint), ca_file)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = CacheClient(endpoint, ca_file=ca_file)
        return client


def reset_clients() -> None:
    """Close every shared client (tests, and after a cache restart)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        try:
            client.close()
        except Exception:  # pragma: no cover - best effort
            log.debug("closing a cache client failed", exc_info=True)
