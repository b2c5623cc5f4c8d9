"""Which process owns something, and whether that process is still there.

A process is named by its *identity*, ``"<pid>:<start>"``, where ``<start>`` is
its start time in clock ticks since boot (``/proc/<pid>/stat``, field 22; 0 where
there is no /proc).  A recycled pid has another start time, so a dead owner is
never mistaken for a live one.  Used for:

* temporary directories (a Runner's packaging dir, a local cluster's work and
  socket dirs): :func:`claim` writes the owner into ``OWNER``, and
  :func:`sweep_dead` removes those whose owner is gone (killed with SIGKILL);
* the Runner's lease on what it creates on a local cluster (``x-flame-lease``
  metadata): the cluster reaps the sessions and applications of a client that is
  gone.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("flamepy.owner")

OWNER_FILE = "OWNER"
"""In each directory claimed by a process: its identity."""
LEASE_METADATA = "x-flame-lease"
"""gRPC metadata a Runner sends with the calls that create what it owns."""


def _start_time(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return 0


@functools.cache
def _identity_of(pid: int) -> str:
    return f"{pid}:{_start_time(pid)}"


def identity() -> str:
    """This process's identity."""
    return _identity_of(os.getpid())


def alive(owner: str) -> bool:
    """Whether the process ``owner`` (an identity, or a bare pid) still runs."""
    pid_text, _, start_text = owner.strip().partition(":")
    try:
        pid = int(pid_text)
        start = int(start_text) if start_text else 0
    except ValueError:
        return True  # not ours to judge
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another account's process: it exists
    if start and Path("/proc").is_dir():
        now = _start_time(pid)
        return now == 0 or now == start
    return True


def claim(path: Path) -> Path:
    """Write this process's identity in ``path/OWNER`` (0600), for :func:`sweep_dead`."""
    target = path / OWNER_FILE
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_TRUNC
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(identity())
    return path


def sweep_dead(parent: Path, prefix: str) -> list[Path]:
    """Remove the directories ``parent/<prefix>*`` of this account whose owner process
    is gone (killed with SIGKILL, or crashed); returns them."""
    removed: list[Path] = []
    try:
        candidates = list(parent.glob(f"{prefix}*"))
    except OSError:
        return removed
    for path in candidates:
        try:
            if path.is_symlink() or path.lstat().st_uid != os.geteuid():
                continue
            owner = (path / OWNER_FILE).read_text()
        except (OSError, ValueError):
            continue
        if owner == identity() or alive(owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by process %s", path, owner.partition(":")[0])
        removed.append(path)
    return removed


def owned_tempdir(prefix: str) -> Path:
    """A new 0700 temporary directory, claimed by this process; those of the same
    prefix whose owner is gone are removed first."""
    sweep_dead(Path(tempfile.gettempdir()), prefix)
    return claim(Path(tempfile.mkdtemp(prefix=prefix)))


__all__ = [
    "LEASE_METADATA",
    "OWNER_FILE",
    "alive",
    "claim",
    "identity",
    "owned_tempdir",
    "sweep_dead",
]
