"""Same-host transfers: payloads handed over as files in shared memory.

Over Flight, a 100 MB object is copied by the client into gRPC messages, by the
kernel twice over loopback, and by the server into one buffer; a reader pays
the same again.  When the client runs on the cache's host it can do better:
it writes the encoded payload once into a file in the cache's *transfer
directory* (on ``/dev/shm`` where there is one, so the file is memory) and
asks the server to adopt it; the server maps the file instead of reading it.
A reader on the host maps the same file: an Arrow tensor is then read in
place, and a pickle is read straight from the mapping.

This is flame-testkit's extension of the protocol (flame-cache.md has a
related client-side "local storage" path, §10), made of three actions next to
``DELETE``.  Bodies and the first result of each are BSON documents:

===============  ===============================  ==========================================
Action           Body                             Results
===============  ===============================  ==========================================
``LOCAL_DIR``    (none)                           ``{dir, token}``: the directory, and a token
                                                  that a client on this host finds in
                                                  ``<dir>/TOKEN_FILE``
``LOCAL_PUT``    ``{target, file}``               a PutResult ``{endpoint, key, version}``;
                                                  ``file`` (a name the client wrote in the
                                                  directory) now belongs to the server
``LOCAL_GET``    ``{key, version}`` (the          ``{mode, version, file}``: ``mode`` is
                 client's version, 0 for none)    ``file`` (map ``file``), ``inline`` (the
                                                  payload is the second result),
                                                  ``not_modified`` or ``flight`` (use DoGet)
===============  ===============================  ==========================================

A server without the directory answers these actions INVALID_ARGUMENT, as
Flame's cache answers any unknown action, and clients then keep to Flight.
When the store lets go of an adopted object (replaced, deleted or evicted), its
file is renamed into the directory's *pool* (``free/``, at most
:data:`POOL_FILES` files and :data:`POOL_BYTES` bytes; beyond that it is
removed); readers' mappings stay valid.  A client that writes its next payload
claims a pooled file by renaming it, and reuses it only when a write lease
proves that no process still has it open or mapped (see
``flamepy._cache.local``): the file's memory is already allocated, and filling
fresh memory costs several times the copy itself.  The old name is gone at the
rename, so nobody can map the dropped object after that.  The directory is
removed when the server stops, or, if its process died, by the next server
started on the host.

An adopted object's file is named ``object_file(key, version)`` exactly while
that object is its key's current one and has no patches (the store tells this
directory under its lock, :class:`~flame_testkit._cache_store.StoreWatcher`);
otherwise it has a private name.  A reader on the host that holds an ObjectRef
maps that name without a ``LOCAL_GET``; a missing name means "ask".
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import weakref
from pathlib import Path

import pyarrow as pa

from flame_testkit._auth import OWNER_FILE, sweep_dead, write_private
from flame_testkit._cache_store import CacheObject, InvalidArgument
from flamepy._cache.local import POOL_DIR, RECYCLE_MIN_BYTES, map_file, object_file

log = logging.getLogger("flame_testkit.cache")

TOKEN_FILE = "TOKEN"
"""Holds the pid of the server process, so a later server can clear up after a crash."""
DIR_PREFIX = "flame-cache-"
SHARED_MEMORY = Path("/dev/shm")
TRANSFER_PARENT_ENV = "FLAME_LOCAL_TRANSFER_DIR"
"""Where cache servers make their transfer directory instead of ``/dev/shm`` (an
existing directory, e.g. a larger tmpfs when ``/dev/shm`` is Docker's 64 MB)."""
INLINE_LIMIT = 256 * 1024
"""Payloads up to this size are answered inline by LOCAL_GET, bigger ones as a file."""
_UPLOAD_NAME = re.compile(r"[0-9a-f]{32}\.part")
_PRIVATE_NAME = re.compile(r"[0-9a-f]{32}\.obj")
"""An adopted file's name while no reader may map it without asking."""
POOL_FILES = 8
"""Dropped objects' files kept for reuse, at most."""
POOL_BYTES = 1 << 30
"""Bytes of dropped objects' files kept for reuse, at most."""


def default_parent() -> str | None:
    """Where the transfer directory goes: ``$FLAME_LOCAL_TRANSFER_DIR`` when set,
    else ``/dev/shm`` when it is a writable directory, else (None) the system temp
    dir.  A set variable must name a writable directory (ValueError otherwise).

    A file system too small for a value is no fault: its writer cannot reserve
    the space (``flamepy._cache.local.reserve``) and sends the value over Flight."""
    configured = os.environ.get(TRANSFER_PARENT_ENV, "").strip()
    if configured:
        if not os.path.isdir(configured) or not os.access(configured, os.W_OK | os.X_OK):
            raise ValueError(
                f"{TRANSFER_PARENT_ENV}={configured!r} is not a writable directory: "
                "create it, or unset the variable to use /dev/shm"
            )
        return configured
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return str(SHARED_MEMORY)
    return None


class LocalTransfer:
    """The transfer directory of one cache server."""

    def __init__(self, parent: str | os.PathLike[str] | None = None) -> None:
        sweep_orphans(Path(parent or tempfile.gettempdir()))
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent))  # mode 0700
        self.token = secrets.token_hex(16)
        write_private(self.dir / OWNER_FILE, str(os.getpid()))
        write_private(self.dir / TOKEN_FILE, self.token)
        (self.dir / POOL_DIR).mkdir(mode=0o700)
        self._files: dict[int, str] = {}  # id(adopted buffer) -> its file's name now
        self._lock = threading.RLock()  # a finalizer may run while it is held
        self._closed = False

    def adopt(self, name: str) -> pa.Buffer:
        """Take over the client's file ``name``: renamed to a server-owned name so
        the client cannot touch it again, mapped, removed once unused."""
        if not _UPLOAD_NAME.fullmatch(name):
            raise InvalidArgument(
                f"transfer file {name!r} is not a name LOCAL_PUT accepts (32 hex digits + .part)"
            )
        given = self.dir / name
        try:
            info = given.lstat()
        except FileNotFoundError:
            raise InvalidArgument(f"transfer file {name!r} is not in {self.dir}") from None
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise InvalidArgument(
                f"transfer file {name!r} must be a regular file with no other links"
            )
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise InvalidArgument(
                f"transfer file {name!r} must be this account's and owner-only (0600)"
            )
        owned = self.dir / f"{secrets.token_hex(16)}.obj"
        try:
            os.rename(given, owned)
        except FileNotFoundError:
            raise InvalidArgument(f"transfer file {name!r} is not in {self.dir}") from None
        try:
            buffer = map_file(owned)
        except OSError as exc:
            owned.unlink(missing_ok=True)
            raise InvalidArgument(
                f"transfer file {name!r} cannot be opened: {exc.strerror}"
            ) from None
        except ValueError as exc:
            owned.unlink(missing_ok=True)
            raise InvalidArgument(f"transfer file {name!r}: {exc}") from None
        with self._lock:
            self._files[id(buffer)] = owned.name
        weakref.finalize(buffer, self._forget, id(buffer))
        return buffer

    # -- StoreWatcher: an adopted object's file carries its public name exactly
    # while the object is its key's current one, unpatched (``object_file``).

    def stored(self, obj: CacheObject) -> None:
        self._rename(obj.base, object_file(str(obj.key), obj.base_version))

    def dropped(self, obj: CacheObject) -> None:
        self._rename(obj.base, f"{secrets.token_hex(16)}.obj", only_public=True)

    def _rename(self, base: object, name: str, only_public: bool = False) -> None:
        with self._lock:
            current = self._files.get(id(base))
            if current is None or (only_public and _PRIVATE_NAME.fullmatch(current)):
                return
            try:
                os.replace(self.dir / current, self.dir / name)
            except OSError as exc:  # the directory went away (closing): nothing to name
                log.debug("cannot rename transfer file %s: %s", current, exc)
                return
            self._files[id(base)] = name

    def _forget(self, ident: int) -> None:
        with self._lock:
            name = self._files.pop(ident, None)
        if name is None:
            return
        path = self.dir / name
        if not self._recycle(path):
            path.unlink(missing_ok=True)

    def _recycle(self, path: Path) -> bool:
        """Move a dropped object's file into the pool, if it is worth keeping and the
        pool has room; whether it did."""
        if self._closed:
            return False
        pool = self.dir / POOL_DIR
        try:
            size = path.stat().st_size
            if size < RECYCLE_MIN_BYTES:
                return False
            pooled = [entry.stat().st_size for entry in os.scandir(pool)]
            if len(pooled) >= POOL_FILES or sum(pooled) + size > POOL_BYTES:
                return False
            os.rename(path, pool / f"{secrets.token_hex(16)}.free")
        except OSError:
            return False
        return True

    def file_of(self, buffer: object) -> str | None:
        """The name of the file behind an adopted buffer, or None."""
        with self._lock:
            return self._files.get(id(buffer))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self.dir, ignore_errors=True)


def sweep_orphans(parent: Path) -> list[Path]:
    """Remove the transfer directories in ``parent`` of cache servers that died
    without stopping (SIGKILL, a crash): this user's, whose owner process is gone.
    Returns what it removed."""
    return sweep_dead(parent, DIR_PREFIX)
