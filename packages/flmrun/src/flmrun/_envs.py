"""Keeping installed packages and environments within a size budget.

Every directory under an install root (``<digest>`` for code, ``env-<key>`` for
dependencies) records its size in its ``.installed`` marker; the marker's mtime
is its last use.  After an install, the least recently used directories are
removed until the total fits ``FLMRUN_ENV_BUDGET`` bytes (default 10 GiB), except:

* those just used (the caller's), and any used within ``PRUNE_GRACE`` seconds,
  since an instance may be starting on it;
* those an instance holds: each flmrun instance takes a shared ``flock`` on the
  ``.inuse`` file of the directories on its ``PYTHONPATH`` for its whole life, and
  the pruner removes a directory only while it holds that lock exclusively.

A directory is first renamed away (atomically, under the lock), then deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("flmrun.install")

BUDGET_ENV = "FLMRUN_ENV_BUDGET"
DEFAULT_BUDGET = 10 * 1024**3
"""Bytes of installed code and environments kept under one root."""
PRUNE_GRACE = 600.0
"""Seconds after its last use during which a directory is never removed."""
MARKER_NAME = ".installed"
INUSE_NAME = ".inuse"

_held: list[int] = []  # this process's shared locks, kept for its life


def record_size(path: Path) -> int:
    """Bytes of the files under ``path`` (not following links)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def claim_use(home: Path) -> None:
    """Mark ``home`` as just used (its marker's mtime)."""
    with contextlib.suppress(OSError):
        os.utime(home / MARKER_NAME)


def hold_in_use(paths: Iterable[str]) -> list[Path]:
    """Take a shared lock on the ``.inuse`` of each install directory among ``paths``
    (PYTHONPATH entries such as ``<root>/<digest>/src``), for this process's life."""
    held = []
    for entry in paths:
        home = Path(entry).parent
        if not (home / MARKER_NAME).is_file():
            continue
        try:
            fd = os.open(home / INUSE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as exc:
            log.debug("cannot mark %s as in use: %s", home, exc)
            continue
        _held.append(fd)
        held.append(home)
    return held


def budget() -> int:
    raw = os.environ.get(BUDGET_ENV, "")
    try:
        return int(raw) if raw else DEFAULT_BUDGET
    except ValueError:
        log.warning("%s=%r is not a number of bytes; using %d", BUDGET_ENV, raw, DEFAULT_BUDGET)
        return DEFAULT_BUDGET


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """(last use, bytes, directory) of each complete install under ``root``."""
    found = []
    for home in root.iterdir():
        if home.name.startswith(".trash-"):  # a removal that was cut short
            shutil.rmtree(home, ignore_errors=True)
            continue
        marker = home / MARKER_NAME
        try:
            used = marker.stat().st_mtime
            size = int(json.loads(marker.read_text(encoding="utf-8")).get("bytes", 0))
        except (OSError, ValueError, AttributeError):
            continue
        found.append((used, size, home))
    return sorted(found)


def prune_environments(root: Path, keep: Iterable[Path], limit: int | None = None) -> list[Path]:
    """Remove least recently used directories under ``root`` until the total fits
    ``limit`` (default :func:`budget`); returns those removed."""
    limit = budget() if limit is None else limit
    try:
        entries = _entries(root)
    except OSError:
        return []
    total = sum(size for _, size, _ in entries)
    kept = {Path(p).resolve() for p in keep}
    removed: list[Path] = []
    now = time.time()
    for used, size, home in entries:
        if total <= limit:
            break
        if home.resolve() in kept or now - used < PRUNE_GRACE:
            continue
        if _remove_unless_held(root, home):
            total -= size
            removed.append(home)
    return removed


def _remove_unless_held(root: Path, home: Path) -> bool:
    try:
        fd = os.open(home / INUSE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # an instance runs on it
        trash = root / f".trash-{uuid.uuid4().hex}"
        try:
            os.rename(home, trash)
        except OSError:
            return False
    finally:
        os.close(fd)
    log.info("removed %s, least recently used, to stay within the install budget", home.name)
    shutil.rmtree(trash, ignore_errors=True)
    return True


__all__ = [
    "BUDGET_ENV",
    "DEFAULT_BUDGET",
    "claim_use",
    "hold_in_use",
    "prune_environments",
    "record_size",
]
