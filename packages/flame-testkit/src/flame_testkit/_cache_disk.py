"""The disk engine of the local object cache (flame-cache.md §8).

Layout under the storage root, one Arrow IPC *file* per base and per patch::

    <root>/<app>/<session>/<id>.arrow            the base
    <root>/<app>/<session>/<id>.deltas/<n>.arrow patch n = 0, 1, 2, ...

An opaque base or patch is one row of the upload schema ``version: uint64,
data: binary`` holding the server's version; a native base is the table itself
with its ``flame.cache.version`` metadata.  Every file is written to a hidden
temporary name in the same directory, flushed to disk and then renamed over the
final name with :func:`os.replace`, so a killed server never leaves a partial
object visible; leftover temporary files are logged and ignored at load.

Replacing an object renames the new base into place first and then removes the
old patches.  Should the server die in between, the stale patches (versions not
above the base's) are skipped and removed at the next load.

Files from :data:`MAP_MIN_BYTES` on are read back *mapped*: the object's bytes
stay in the page cache, which the kernel may reclaim, instead of being copied
into the server's own memory.  That is what lets the store keep objects larger
than its memory budget on disk and still serve them.  A file is never changed in
place (a new one is renamed over it), so a mapping stays valid while it is used.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import uuid
from pathlib import Path

import pyarrow as pa

from flame_testkit._cache_store import (
    UPLOAD_SCHEMA,
    WILDCARD,
    CacheError,
    CacheObject,
    InvalidArgument,
    NativeTable,
    ObjectKey,
    Opaque,
    Patch,
    binary_cell,
    is_native,
)
from flamepy._cache.codec import uint64_array

log = logging.getLogger("flame_testkit.cache")

DEFAULT_FLAME_HOME = "/var/lib/flame"
BASE_SUFFIX = ".arrow"
DELTAS_SUFFIX = ".deltas"
TEMP_SUFFIX = ".tmp"
MAP_MIN_BYTES = 1 << 20
"""Files at least this large are mapped when read, smaller ones read (one mapping
per small object would cost more than the copy and use up the process's maps)."""


def parse_storage_url(
    url: str | os.PathLike[str] | None, flame_home: str | None = None
) -> Path | None:
    """The storage root for a ``cache.storage`` value, or None for memory only.

    ``none`` or empty: memory only.  ``fs://<abs>``, ``file://<abs>`` or a plain
    absolute path: that directory.  ``fs://<relative>``: relative to
    ``flame_home`` (default ``$FLAME_HOME``, else ``/var/lib/flame``).
    """
    if url is None:
        return None
    text = os.fspath(url).strip()
    if not text or text.lower() == "none":
        return None
    for scheme in ("fs://", "file://"):
        if text.startswith(scheme):
            rest = text[len(scheme) :]
            if not rest:
                raise ValueError(f"storage URL {text!r} has no path")
            if os.path.isabs(rest):
                return Path(rest)
            if scheme == "fs://":
                home = flame_home or os.environ.get("FLAME_HOME") or DEFAULT_FLAME_HOME
                return Path(home) / rest
            raise ValueError(f"storage URL {text!r}: file:// needs an absolute path")
    if "://" in text:
        raise ValueError(f"unsupported storage URL {text!r}: use none, fs://, file:// or a path")
    if not os.path.isabs(text):
        raise ValueError(f"storage path {text!r} must be absolute")
    return Path(text)


class DiskStorage:
    """Arrow IPC files under ``root``; implements the store's ``DiskBackend``.

    Owner-only: the root is made 0700 (another account's is refused), directories
    under it are created 0700 and files 0600."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.root.stat()
        if info.st_uid != os.geteuid():
            raise ValueError(
                f"cache storage {self.root} belongs to another account (uid {info.st_uid}); "
                "name a directory of your own"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(self.root, 0o700)

    def base_path(self, key: ObjectKey) -> Path:
        return self.root / key.app / key.session / f"{key.object_id}{BASE_SUFFIX}"

    def deltas_dir(self, key: ObjectKey) -> Path:
        return self.root / key.app / key.session / f"{key.object_id}{DELTAS_SUFFIX}"

    def load_all(self) -> list[CacheObject]:
        """Every object under the root; unreadable files are logged and skipped."""
        objects: list[CacheObject] = []
        for app in _subdirs(self.root):
            for session in _subdirs(app):
                for path in sorted(session.iterdir()):
                    name = path.name
                    if name.endswith(TEMP_SUFFIX):
                        _remove_leftover(path)
                        continue
                    if not name.endswith(BASE_SUFFIX) or not path.is_file():
                        continue
                    key = ObjectKey(app.name, session.name, name[: -len(BASE_SUFFIX)])
                    obj = self._load_logged(key)
                    if obj is not None:
                        objects.append(obj)
        log.info("loaded %d object(s) from %s", len(objects), self.root)
        return objects

    def load(self, key: ObjectKey) -> CacheObject | None:
        """One object, or None when its base file does not exist."""
        if not _storable(key) or not self.base_path(key).is_file():
            return None
        return self._load_logged(key)

    def write_base(self, obj: CacheObject) -> None:
        """Write (or atomically replace) the base and drop any old patches."""
        key = obj.key
        _check_storable(key)
        try:
            if isinstance(obj.base, NativeTable):
                _write_table(self.base_path(key), obj.base.schema, obj.base.batches, self.fsync)
            else:
                batch = _opaque_batch(obj.base_version, obj.base)
                _write_table(self.base_path(key), UPLOAD_SCHEMA, (batch,), self.fsync)
            shutil.rmtree(self.deltas_dir(key), ignore_errors=True)
        except (OSError, pa.ArrowException) as exc:
            raise CacheError(f"cannot write object {key}: {exc}") from exc

    def write_patch(self, key: ObjectKey, index: int, patch: Patch) -> None:
        _check_storable(key)
        path = self.deltas_dir(key) / f"{index}{BASE_SUFFIX}"
        try:
            batch = _opaque_batch(patch.version, patch.data)
            _write_table(path, UPLOAD_SCHEMA, (batch,), self.fsync)
        except (OSError, pa.ArrowException) as exc:
            raise CacheError(f"cannot write delta {index} of {key}: {exc}") from exc

    def delete(self, key: ObjectKey) -> None:
        """Remove an object, a session directory or (``<app>/*``) an app directory."""
        if not _storable(key):
            return
        try:
            if key.object_id is not None:
                self.base_path(key).unlink(missing_ok=True)
                shutil.rmtree(self.deltas_dir(key), ignore_errors=True)
            elif key.session == WILDCARD:
                shutil.rmtree(self.root / key.app, ignore_errors=True)
            else:
                shutil.rmtree(self.root / key.app / key.session, ignore_errors=True)
        except OSError as exc:
            raise CacheError(f"cannot delete {key}: {exc}") from exc

    def _load_logged(self, key: ObjectKey) -> CacheObject | None:
        try:
            return self._load(key)
        except (OSError, pa.ArrowException, CacheError) as exc:
            log.error("skipping unreadable object %s: %s", key, exc)
            return None

    def _load(self, key: ObjectKey) -> CacheObject:
        schema, batches = _read_file(self.base_path(key))
        if is_native(schema):
            table = NativeTable(schema, tuple(batches))
            base: Opaque | NativeTable = table
            base_version = table.version
        else:
            base_version, base = read_opaque(schema, batches)
        obj = CacheObject(key, base_version, base)
        deltas = self.deltas_dir(key)
        if deltas.is_dir():
            self._load_patches(obj, deltas)
        return obj

    def _load_patches(self, obj: CacheObject, deltas: Path) -> None:
        numbered: list[tuple[int, Path]] = []
        for path in deltas.iterdir():
            stem = path.name[: -len(BASE_SUFFIX)] if path.name.endswith(BASE_SUFFIX) else ""
            if stem.isdigit():
                numbered.append((int(stem), path))
            elif path.name.endswith(TEMP_SUFFIX):
                _remove_leftover(path)
        for _, path in sorted(numbered):
            version, data = read_opaque(*_read_file(path))
            latest = obj.version
            if version == 0:
                version = latest + 1
            elif version <= latest:
                log.warning("removing stale delta %s (version %d <= %d)", path, version, latest)
                path.unlink(missing_ok=True)
                continue
            obj.patches.append(Patch(version, data))


def read_opaque(schema: pa.Schema, batches: list[pa.RecordBatch]) -> tuple[int, Opaque]:
    """(version of row 0, all ``data`` cells concatenated) of an opaque upload or file.

    Columns are taken by position: 0 must be UInt64 and 1 Binary (§3).  A single
    cell (every file this engine writes) is returned as it is, without a copy.
    """
    check_opaque_schema(schema)
    version: int | None = None
    chunks: list[pa.Buffer] = []
    for batch in batches:
        if version is None and batch.num_rows:
            version = batch.column(0)[0].as_py() or 0
        chunks.extend(binary_chunks(batch.column(1)))
    if len(chunks) == 1:
        return version or 0, chunks[0]
    return version or 0, b"".join(memoryview(c) for c in chunks)


def check_opaque_schema(schema: pa.Schema) -> None:
    if len(schema) < 2 or schema.types[0] != pa.uint64() or schema.types[1] != pa.binary():
        raise CacheError(
            f"expected the opaque schema (version: uint64, data: binary), got {schema.types}"
        )


def binary_chunks(array: pa.Array) -> list[pa.Buffer]:
    """The bytes of every cell of a Binary array (nulls as empty), without copying."""
    if len(array) == 0:
        return []
    if array.null_count:
        return [pa.py_buffer(b"" if v is None else v) for v in array.to_pylist()]
    _, offsets, data = array.buffers()
    start = array.offset * 4
    first = int.from_bytes(offsets[start : start + 4].to_pybytes(), "little", signed=True)
    end = (array.offset + len(array)) * 4
    last = int.from_bytes(offsets[end : end + 4].to_pybytes(), "little", signed=True)
    return [data[first:last]] if last > first else []


def _opaque_batch(version: int, data: Opaque) -> pa.RecordBatch:
    columns = [uint64_array(version), binary_cell(data)]
    return pa.RecordBatch.from_arrays(columns, schema=UPLOAD_SCHEMA)


def _read_file(path: Path) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """The schema and batches of an IPC file: mapped (zero-copy) when it is large.

    A mapping outlives the closed file: the batches keep it until they go."""
    source: pa.NativeFile
    if path.stat().st_size >= MAP_MIN_BYTES:
        source = pa.memory_map(str(path), "r")
    else:
        source = pa.OSFile(str(path), "rb")
    with source:
        reader = pa.ipc.open_file(source)
        return reader.schema, [reader.get_batch(i) for i in range(reader.num_record_batches)]


def _write_table(
    path: Path, schema: pa.Schema, batches: tuple[pa.RecordBatch, ...], fsync: bool
) -> None:
    """Write an IPC file next to ``path`` under a temporary name, then rename it."""
    _private_parents(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        try:
            _write_ipc_file(tmp, schema, batches)
        except pa.ArrowInvalid:
            # IPC files allow one dictionary per field; unify differing ones.
            table = pa.Table.from_batches(batches, schema).unify_dictionaries()
            _write_ipc_file(tmp, schema, tuple(table.to_batches()))
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _private_parents(directory: Path) -> None:
    """``mkdir -p`` with each directory it creates made 0700."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for item in reversed(missing):
        item.mkdir(mode=0o700, exist_ok=True)


def _write_ipc_file(path: Path, schema: pa.Schema, batches: tuple[pa.RecordBatch, ...]) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir())


def _storable(key: ObjectKey) -> bool:
    """``.`` components would alias other paths (``a/./x`` is ``a/x``): not on disk."""
    return "." not in (key.app, key.session, key.object_id)


def _check_storable(key: ObjectKey) -> None:
    if not _storable(key):
        raise InvalidArgument(f"key {key} has a '.' component and cannot be stored on disk")


def _remove_leftover(path: Path) -> None:
    """A temporary file of a write that never finished (the cache was killed): it
    holds nothing anyone can read, so it goes."""
    try:
        size = path.stat().st_size
        path.unlink()
    except OSError as exc:
        log.warning("cannot remove the leftover temporary file %s: %s", path, exc)
        return
    log.info("removed %s (%d bytes), left by a write that never finished", path, size)
