"""The object store of the local object cache (flame-cache.md §2, §4, §7, §8).

Pure state: keys, objects, versions, the GET decision and an LRU over memory.
No Flight and no gRPC here; ``_cache_server.py`` speaks the protocol over this
store and ``_cache_disk.py`` persists it.  Errors are :class:`CacheError`
subclasses whose ``status`` names the gRPC code the server answers with.

All public methods take one lock, so the Flight server may call them from many
threads.  Disk writes happen under that lock too: versions are assigned and
persisted in one step, so the files never disagree with memory.

Memory is bounded: ``max_memory`` is a budget, not only an eviction threshold.
Objects the budget cannot hold go to disk (the durable storage, or the spill
directory) and are read back from there, mapped, when used; where there is no
disk, an object that cannot fit is refused with a clear error, and so is every
object above ``max_object_bytes``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias

import pyarrow as pa

from flamepy._cache.codec import binary_array

log = logging.getLogger("flame_testkit.cache")

DEFAULT_MAX_MEMORY = 1 << 30
"""The memory budget: bytes of bases and patches held in memory, at most."""
DEFAULT_MAX_OBJECT_BYTES = 4 << 30
"""The largest object (base plus patches, a native table's buffers) accepted."""
MAX_MEMORY_SETTING = "max_memory; LocalClusterConfig.cache_max_memory"
MAX_OBJECT_SETTING = "max_object_bytes; LocalClusterConfig.cache_max_object_bytes"
MAX_DELTAS = 1000
FORMAT_KEY = b"flame.cache.format"
VERSION_KEY = b"flame.cache.version"
ARROW_TABLE_FORMAT = b"arrow-table-v1"
WILDCARD = "*"
UPLOAD_SCHEMA = pa.schema([("version", pa.uint64()), ("data", pa.binary())])
"""The opaque upload schema (§3); also the schema of opaque files on disk (§8)."""

EvictionPolicy = Literal["lru", "none"]


class CacheError(Exception):
    """A request broke a rule; ``status`` is the gRPC status name to answer with."""

    status = "INTERNAL"


class InvalidArgument(CacheError):
    status = "INVALID_ARGUMENT"


class NotFound(CacheError):
    status = "NOT_FOUND"


class TooLarge(InvalidArgument):
    """An object above a size limit: it can never be stored as it is."""


class Unavailable(CacheError):
    """The server cannot serve the request now (it is stopping)."""

    status = "UNAVAILABLE"


class ResourceExhausted(CacheError):
    """A limit that may clear later (uploads in progress, memory held).

    pyarrow's Flight server cannot answer RESOURCE_EXHAUSTED itself (no Python
    exception maps to it), so the server sends these as UNAVAILABLE, whose
    meaning ("try again later") they share; the message says which limit."""

    status = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class ObjectKey:
    """``<app>/<session>[/<object_id>]``; ``session`` is ``*`` only for a DELETE wildcard."""

    app: str
    session: str
    object_id: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.app}/{self.session}"
        return prefix if self.object_id is None else f"{prefix}/{self.object_id}"


def parse_key(text: str, *, full: bool = False, wildcard: bool = False) -> ObjectKey:
    """Validate a key per §2: 2 or 3 non-empty components without ``..`` or ``\\``.

    ``full`` requires an object id (GET, PATCH); ``wildcard`` allows ``<app>/*``
    (DELETE).  ``*`` is refused everywhere else.
    """
    parts = text.split("/")
    if len(parts) not in (2, 3):
        raise InvalidArgument(f"invalid key {text!r}: expected <app>/<session>[/<object_id>]")
    for part in parts:
        if not part or ".." in part or "\\" in part or ":" in part:
            raise InvalidArgument(
                f"invalid key {text!r}: components must be non-empty, without '..', '\\' "
                "or ':' (a key with ':' could never be read: the ticket is <key>:<version>)"
            )
    allowed = wildcard and len(parts) == 2
    if parts[0] == WILDCARD or parts[2:] == [WILDCARD] or (parts[1] == WILDCARD and not allowed):
        raise InvalidArgument(f"invalid key {text!r}: '*' is only allowed as <app>/* in DELETE")
    if full and len(parts) != 3:
        raise InvalidArgument(f"invalid key {text!r}: a full key <app>/<session>/<id> is required")
    return ObjectKey(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


Opaque: TypeAlias = "bytes | pa.Buffer"
"""An opaque payload: bytes, or a buffer (a mapped transfer file, see _cache_local)."""


def binary_cell(data: Opaque) -> pa.Array:
    """A one-element Binary array over ``data`` without copying it.

    Binary uses 32-bit offsets, so ``data`` must be shorter than 2 GiB.
    """
    return binary_array(data)


@dataclass(frozen=True)
class NativeTable:
    """An ``arrow-table-v1`` base: the uploaded schema and batches, kept as they came."""

    schema: pa.Schema
    batches: tuple[pa.RecordBatch, ...]

    @property
    def nbytes(self) -> int:
        return sum(int(b.nbytes) for b in self.batches)

    @property
    def version(self) -> int:
        """The ``flame.cache.version`` metadata (0 when absent or not a number)."""
        raw = (self.schema.metadata or {}).get(VERSION_KEY, b"0")
        return int(raw) if raw.isdigit() else 0

    def with_version(self, version: int) -> NativeTable:
        metadata = dict(self.schema.metadata or {})
        metadata[VERSION_KEY] = str(version).encode()
        return NativeTable(self.schema.with_metadata(metadata), self.batches)


def is_native(schema: pa.Schema) -> bool:
    return bool((schema.metadata or {}).get(FORMAT_KEY) == ARROW_TABLE_FORMAT)


Base: TypeAlias = "Opaque | NativeTable"


@dataclass(frozen=True)
class Patch:
    version: int
    data: Opaque


@dataclass
class CacheObject:
    """One cached object: a versioned base plus its patches in ascending version order."""

    key: ObjectKey
    base_version: int
    base: Base
    patches: list[Patch] = field(default_factory=list)

    @property
    def version(self) -> int:
        """The highest of the base and patch versions (§4.3 ``server_version``)."""
        return max([self.base_version, *(p.version for p in self.patches)])

    @property
    def size(self) -> int:
        base = self.base.nbytes if isinstance(self.base, NativeTable) else len(self.base)
        return base + sum(len(p.data) for p in self.patches)


@dataclass(frozen=True)
class GetResult:
    """What DoGet sends: ``not_modified``, ``patches`` only, ``full`` or a ``native`` table."""

    kind: Literal["not_modified", "patches", "full", "native"]
    base_version: int = 0
    base: Base | None = None
    patches: tuple[Patch, ...] = ()


@dataclass(frozen=True)
class Listing:
    key: str
    size: int


class DiskBackend(Protocol):
    """What the store needs from a disk engine (``_cache_disk.DiskStorage``)."""

    def load_all(self) -> list[CacheObject]: ...

    def load(self, key: ObjectKey) -> CacheObject | None: ...

    def write_base(self, obj: CacheObject) -> None: ...

    def write_patch(self, key: ObjectKey, index: int, patch: Patch) -> None: ...

    def delete(self, key: ObjectKey) -> None: ...


class StoreWatcher(Protocol):
    """Told, under the store's lock, when an object becomes or stops being the one
    a key holds as it is (``_cache.local`` names adopted files after them)."""

    def stored(self, obj: CacheObject) -> None:
        """``obj`` is now the object at its key, with no patches."""

    def dropped(self, obj: CacheObject) -> None:
        """``obj`` is no longer the object at its key as it was stored: replaced,
        deleted, evicted or patched.  May be told more than once."""


class ObjectStore:
    """Objects by full key, with versions (§7), the GET rules (§4.3) and an LRU (§8).

    ``max_memory`` bounds the bytes held (bases plus patches) and ``max_objects``
    the count; with ``eviction="lru"`` the least recently used objects leave memory
    when a limit is exceeded.  With a ``disk`` backend every object is loaded at
    construction and an evicted one is reloaded on its next use.  With a ``spill``
    backend (and no ``disk``) objects are written only when they are evicted, and
    reloaded from there: nothing a client may still read is dropped.  With
    neither, an evicted object is gone (later reads are NOT_FOUND), as with
    Flame's own cache and storage ``none`` (C1).

    ``max_memory`` is a budget: an object larger than it is never held in memory.
    With a disk it lives there (written at once to the spill) and is read back,
    mapped, for each use; without one it is refused (:class:`TooLarge`, where
    Flame's cache would accept it and lose it at once, C1).  With
    ``eviction="none"`` nothing is evicted, so a put or patch that would take the
    memory held over the budget is refused (:class:`ResourceExhausted`).  An
    object larger than ``max_object_bytes`` is refused in every case.
    """

    def __init__(
        self,
        *,
        max_memory: int = DEFAULT_MAX_MEMORY,
        max_objects: int | None = None,
        eviction: EvictionPolicy = "lru",
        disk: DiskBackend | None = None,
        watcher: StoreWatcher | None = None,
        spill: DiskBackend | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ) -> None:
        if max_memory <= 0:
            raise ValueError(f"max_memory must be positive, got {max_memory}")
        if max_object_bytes <= 0:
            raise ValueError(f"max_object_bytes must be positive, got {max_object_bytes}")
        if max_objects is not None and max_objects <= 0:
            raise ValueError(f"max_objects must be positive, got {max_objects}")
        if eviction not in ("lru", "none"):
            raise ValueError(f"eviction must be 'lru' or 'none', got {eviction!r}")
        self.max_memory = max_memory
        self.max_object_bytes = max_object_bytes
        self.max_objects = max_objects
        self.eviction = eviction
        self.disk = disk
        self.spill = spill if disk is None else None
        self._spilled: set[str] = set()
        """Keys whose newest state is only in ``spill``."""
        self._clean: set[str] = set()
        """Keys held in memory exactly as their copy in ``spill`` (read back from it
        and unchanged since): evicting one again writes nothing."""
        self.watcher = watcher
        self._objects: OrderedDict[str, CacheObject] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        if disk is not None:
            for obj in disk.load_all():
                self._insert(obj)

    @property
    def memory_used(self) -> int:
        """Bytes of bases and patches currently held in memory."""
        with self._lock:
            return self._used

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    @property
    def can_spill(self) -> bool:
        """Whether objects that do not fit in memory can go to disk."""
        return self.disk is not None or self.spill is not None

    def check_size(self, size: int, *, partial: bool = False) -> None:
        """Refuse an object of ``size`` bytes that no state of the store could take
        (:class:`TooLarge`).  ``partial``: ``size`` is what an upload has sent so
        far, so the object is at least that large (an early, cheap refusal)."""
        what = f"at least {size}" if partial else f"{size}"
        if size > self.max_object_bytes:
            raise TooLarge(
                f"object of {what} bytes is larger than the cache's limit for one object, "
                f"{self.max_object_bytes} bytes ({MAX_OBJECT_SETTING}): split it, or raise "
                "the limit"
            )
        if size > self.max_memory and (not self.can_spill or self.eviction == "none"):
            if self.can_spill:
                reason = "and eviction is 'none'"
                fix = "raise the budget, or use eviction 'lru'"
            else:
                reason = "and the cache has no disk to spill it to"
                fix = (
                    "raise the budget, or give the cache storage (cache_storage) or a "
                    "spill directory (cache_spill)"
                )
            raise TooLarge(
                f"object of {what} bytes is larger than the cache's memory budget, "
                f"{self.max_memory} bytes ({MAX_MEMORY_SETTING}), {reason}: {fix}"
            )

    def put(self, target: str, base: Base) -> tuple[str, int]:
        """Store ``base`` at a prefix (new UUID key) or an exact key; returns (key, version).

        A new object gets version 1; replacing one gets its highest version + 1 and
        drops its patches.  A native table's ``flame.cache.version`` is rewritten.
        """
        key = parse_key(target)
        size = base.nbytes if isinstance(base, NativeTable) else len(base)
        self.check_size(size)
        with self._lock:
            if key.object_id is None:
                key = ObjectKey(key.app, key.session, str(uuid.uuid4()))
                version = 1
                held = None
            else:
                current = self._lookup(key)
                version = 1 if current is None else current.version + 1
                held = self._objects.get(str(key))
            self._check_room(size - (held.size if held is not None else 0))
            if isinstance(base, NativeTable):
                base = base.with_version(version)
            obj = CacheObject(key, version, base)
            if self.disk is not None:
                self.disk.write_base(obj)
            if self._insert(obj) and self.watcher is not None:
                self.watcher.stored(obj)
            log.debug("put %s version %d (%d bytes)", key, version, obj.size)
            return str(key), version

    def patch(self, target: str, data: Opaque) -> tuple[str, int]:
        """Append a delta to an existing object; returns (key, new version)."""
        key = parse_key(target, full=True)
        with self._lock:
            obj = self._require(key)
            if len(obj.patches) >= MAX_DELTAS:
                raise InvalidArgument(f"object {key} already has {MAX_DELTAS} deltas")
            self.check_size(obj.size + len(data))
            name = str(key)
            held = self._objects.get(name) is obj
            patch = Patch(obj.version + 1, data)
            index = len(obj.patches)
            grown = held and self._too_big(obj.size + len(data))
            if held and not grown:
                self._check_room(len(data))
                self._make_room(len(data), keep=name)
            if self.disk is not None:
                self.disk.write_patch(key, index, patch)
            elif not held and self.spill is not None:
                self.spill.write_patch(key, index, patch)  # it lives in the spill
            obj.patches.append(patch)
            if grown:  # now larger than the budget: out of memory, whole
                try:
                    fate = self._release(obj, clean=False)
                except BaseException:
                    obj.patches.pop()
                    raise
                del self._objects[name]
                self._clean.discard(name)
                self._used -= obj.size - len(data)
                log.info("moved %s (%d bytes) out of memory: %s", name, obj.size, fate)
            elif held:
                self._clean.discard(name)
                self._used += len(data)
            if self.watcher is not None:
                self.watcher.dropped(obj)  # no longer its base alone
            log.debug("patch %s version %d (%d bytes)", key, patch.version, len(data))
            return str(key), patch.version

    def get(self, target: str, client_version: int) -> GetResult:
        """Decide what DoGet sends to a client that holds ``client_version`` (§4.3)."""
        key = parse_key(target, full=True)
        with self._lock:
            obj = self._require(key)
            server_version = obj.version
            if client_version != 0 and client_version == server_version:
                return GetResult("not_modified")
            if isinstance(obj.base, NativeTable):
                return GetResult("native", obj.base_version, obj.base)
            if client_version != 0 and obj.base_version <= client_version < server_version:
                newer = [p for p in obj.patches if p.version > client_version]
                wanted = list(range(client_version + 1, server_version + 1))
                if [p.version for p in newer] == wanted:
                    return GetResult("patches", patches=tuple(newer))
            if client_version > server_version:
                log.warning(
                    "client version %d of %s is newer than the server's %d; sending it all",
                    client_version,
                    key,
                    server_version,
                )
            return GetResult("full", obj.base_version, obj.base, tuple(obj.patches))

    def native_schema(self, target: str) -> pa.Schema | None:
        """The stored schema when ``target`` is a known native table, else None."""
        try:
            key = parse_key(target, full=True)
        except CacheError:
            return None
        with self._lock:
            obj = self._lookup(key)
            if obj is not None and isinstance(obj.base, NativeTable):
                return obj.base.schema
            return None

    def delete(self, target: str) -> int:
        """Delete a key, a session prefix or ``<app>/*``; returns how many were in memory."""
        key = parse_key(target, wildcard=True)
        prefix = None
        if key.object_id is None:
            prefix = f"{key.app}/" if key.session == WILDCARD else f"{key}/"
        with self._lock:
            if prefix is None:
                doomed = [str(key)] if str(key) in self._objects else []
            else:
                doomed = [k for k in self._objects if k.startswith(prefix)]
            for name in doomed:
                self._forget(self._objects.pop(name))
                self._clean.discard(name)
            if self.disk is not None:
                self.disk.delete(key)
            if self.spill is not None:
                gone = {
                    k
                    for k in self._spilled
                    if k == str(key) or (prefix is not None and k.startswith(prefix))
                }
                if gone:
                    self._spilled -= gone
                    self.spill.delete(key)
            log.debug("delete %s: %d object(s) in memory", key, len(doomed))
            return len(doomed)

    def listing(self) -> list[Listing]:
        """Every object in memory with its size (does not count as a use)."""
        with self._lock:
            return [Listing(k, o.size) for k, o in self._objects.items()]

    def inventory(self) -> list[tuple[str, int | None, int, str]]:
        """(key, version, bytes, where) of every object, ``where`` being ``memory``,
        ``memory+disk`` (a disk keeps a copy), ``disk`` or ``spilled`` (evicted; its
        version is in the file, unread: None).  Does not count as a use."""
        with self._lock:
            disk = "memory+disk" if self.disk is not None else "memory"
            rows: list[tuple[str, int | None, int, str]] = [
                (k, o.version, o.size, disk) for k, o in self._objects.items()
            ]
            spilled = sorted(self._spilled - set(self._objects))
        for name in spilled:
            size = 0
            base_path = getattr(self.spill, "base_path", None)  # DiskStorage's
            if base_path is not None:
                try:
                    size = base_path(parse_key(name, full=True)).stat().st_size
                except (OSError, CacheError):
                    size = 0
            rows.append((name, None, size, "spilled"))
        return rows

    def _require(self, key: ObjectKey) -> CacheObject:
        obj = self._lookup(key)
        if obj is None:
            raise NotFound(f"object {key} not found")
        return obj

    def _lookup(self, key: ObjectKey) -> CacheObject | None:
        name = str(key)
        obj = self._objects.get(name)
        if obj is not None:
            self._objects.move_to_end(name)
            return obj
        backend = self.disk
        if backend is None and self.spill is not None and name in self._spilled:
            backend = self.spill
        if backend is None:
            return None
        obj = backend.load(key)
        if obj is not None:
            log.debug("reloaded %s from disk", key)
            try:
                self._insert(obj, clean=True)
            except ResourceExhausted as exc:  # no room: served from disk, not held
                log.warning("serving %s from disk without holding it: %s", key, exc)
        return obj

    def _check_room(self, growth: int) -> None:
        """With eviction ``none``, refuse what would take memory over the budget."""
        if self.eviction == "none" and growth > 0 and self._used + growth > self.max_memory:
            raise ResourceExhausted(
                f"resource exhausted: the cache holds {self._used} bytes and {growth} more "
                f"would exceed its memory budget, {self.max_memory} bytes "
                f"({MAX_MEMORY_SETTING}), and eviction is 'none': delete objects, raise the "
                "budget, or use eviction 'lru'"
            )

    def _too_big(self, size: int) -> bool:
        """Whether an object of ``size`` bytes is kept on disk rather than in memory."""
        return size > self.max_memory and self.can_spill and self.eviction == "lru"

    def _insert(self, obj: CacheObject, *, clean: bool = False) -> bool:
        """Make ``obj`` its key's object; whether it is held in memory.  One larger
        than the budget goes (or stays) on disk instead.  ``clean``: it was just
        read from the spill, which therefore already holds it.

        Room is made before anything changes: when a spill fails (a full disk),
        the error goes to the caller and the store is as it was."""
        name = str(obj.key)
        big = self._too_big(obj.size)
        if big:
            fate = self._release(obj, clean=clean)
        else:
            current = self._objects.get(name)
            self._make_room(obj.size - (current.size if current is not None else 0), keep=name)
        old = self._objects.pop(name, None)
        if old is not None:
            self._forget(old)
        self._clean.discard(name)
        if big:
            log.debug("%s (%d bytes) is larger than the memory budget: %s", name, obj.size, fate)
            return False
        self._objects[name] = obj
        self._used += obj.size
        if clean:
            self._clean.add(name)
        return True

    def _forget(self, obj: CacheObject) -> None:
        """Account for ``obj`` having left memory."""
        self._used -= obj.size
        if self.watcher is not None:
            self.watcher.dropped(obj)

    def _make_room(self, growth: int, *, keep: str) -> None:
        """Evict the least recently used objects (never ``keep``) until ``growth``
        more bytes, and ``keep`` itself, fit the limits.  Without a disk the object
        at ``keep`` stays even when it alone is over the budget (it cannot be: a
        put or patch that would make it so is refused, :meth:`check_size`)."""
        if self.eviction == "none":
            return
        count = len(self._objects) + (keep not in self._objects)
        while self._used + growth > self.max_memory or (
            self.max_objects is not None and count > self.max_objects
        ):
            name = next((n for n in self._objects if n != keep), None)
            if name is None:
                return
            obj = self._objects[name]
            fate = self._release(obj, clean=name in self._clean)  # may raise: it stays
            del self._objects[name]
            self._clean.discard(name)
            self._forget(obj)
            count -= 1
            log.info("evicted %s (%d bytes, %s)", name, obj.size, fate)

    def _release(self, obj: CacheObject, *, clean: bool) -> str:
        """What becomes of ``obj`` leaving memory: it is spilled, unless the spill
        holds it already (``clean``) or it is on the durable disk anyway."""
        if self.disk is not None:
            return "kept on disk"
        if self.spill is None:
            return "lost, no storage"
        if clean:
            return "already in the spill"
        self._spill(obj)
        return "spilled to disk"

    def _spill(self, obj: CacheObject) -> None:
        """Write an evicted object (base and patches) to the spill backend."""
        assert self.spill is not None
        try:
            self.spill.write_base(obj)
            for index, patch in enumerate(obj.patches):
                self.spill.write_patch(obj.key, index, patch)
        except CacheError as exc:
            raise ResourceExhausted(
                f"resource exhausted: the object {obj.key} ({obj.size} bytes) must leave memory "
                f"and cannot be spilled to disk ({exc}): free space in the spill directory, "
                f"raise the memory budget ({MAX_MEMORY_SETTING}) or delete objects"
            ) from exc
        self._spilled.add(str(obj.key))
