"""Where finished tasks go, so that a long-lived session stays flat in memory.

A session keeps every task it ever ran (GetTask, ListTask and WatchTask answer
for them, as a real session manager's database does).  In memory, a million
small Runner calls grew the session manager by 180 MB.  So the state keeps the
newest finished tasks of each session in memory and hands older ones here, whole
(payloads, events, times): per session, a data file of pickled task records and
an index file of fixed-size entries at ``(id - 1) * 16`` (offset, length), since
task ids are dense.  What stays in memory for an archived task is nothing at all:
an id below ``next_task_id`` that is not in memory is in the archive.  The files
are owner-only, in the cluster's work directory, and go with their session;
only this process writes or reads them.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import threading
from pathlib import Path
from typing import Any

_ENTRY = struct.Struct("<QQ")  # offset, length


class TaskArchive:
    """Per-session append-only record files under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._files: dict[str, tuple[int, int]] = {}  # session -> (data fd, index fd)
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def _stem(self, session_id: str) -> Path:
        return self.directory / hashlib.sha256(session_id.encode()).hexdigest()[:32]

    def _open(self, session_id: str) -> tuple[int, int]:
        files = self._files.get(session_id)
        if files is None:
            stem = self._stem(session_id)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            data = os.open(f"{stem}.tasks", flags | os.O_APPEND, 0o600)
            try:
                index = os.open(f"{stem}.idx", flags, 0o600)
            except OSError:
                os.close(data)
                raise
            files = self._files[session_id] = (data, index)
            self._sizes[session_id] = os.fstat(data).st_size
        return files

    def put(self, session_id: str, task_id: int, record: Any) -> None:
        """Store a finished task's whole record under its id."""
        blob = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            data, index = self._open(session_id)
            offset = self._sizes[session_id]
            if os.write(data, blob) != len(blob):
                raise OSError("short write to the task archive")
            self._sizes[session_id] = offset + len(blob)
            os.pwrite(index, _ENTRY.pack(offset, len(blob)), (task_id - 1) * _ENTRY.size)

    def get(self, session_id: str, task_id: int) -> Any:
        """The record stored under ``task_id``; None if there is none."""
        with self._lock:
            data, index = self._open(session_id)
        entry = os.pread(index, _ENTRY.size, (task_id - 1) * _ENTRY.size)
        if len(entry) != _ENTRY.size:
            return None
        offset, length = _ENTRY.unpack(entry)
        if length == 0:
            return None
        blob = os.pread(data, length, offset)
        if len(blob) != length:
            raise OSError(f"the task archive of session {session_id} is truncated")
        return pickle.loads(blob)

    def drop(self, session_id: str) -> None:
        """Forget a removed session's tasks."""
        with self._lock:
            files = self._files.pop(session_id, None)
            self._sizes.pop(session_id, None)
        for fd in files or ():
            os.close(fd)
        stem = self._stem(session_id)
        for suffix in (".tasks", ".idx"):
            Path(f"{stem}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            files, self._files = list(self._files.values()), {}
            self._sizes.clear()
        for pair in files:
            for fd in pair:
                os.close(fd)


__all__ = ["TaskArchive"]
