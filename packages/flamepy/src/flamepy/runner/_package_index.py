"""Which package an unchanged tree builds, remembered so it is not built again.

Building a package reads, tars, compresses and hashes every file: for a 200 MB
project that is seconds on every start, even when the storage already holds the
package.  The index maps a *fingerprint* of the tree to the package it built:

* for every file that goes in: its path, size, mode, inode, mtime and ctime
  (the kernel sets ctime on every write and no tool can set it back, so a file
  rewritten with its old size and mtime still changes the fingerprint, as in
  git's index);
* the bytes of the generated files (the generated ``pyproject.toml``);
* the package name and the index format.

A hit gives the digest, so the Runner can ask the storage without building.
Only when the storage lacks the package is it built (and the built digest is
what gets uploaded).  The index lives in ``$XDG_CACHE_HOME/flame/packages``
(``~/.cache/flame/packages``), owner-only, at most ``MAX_ENTRIES`` entries; any
trouble with it only means a build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("flamepy.runner.package")

INDEX_FORMAT = 1
MAX_ENTRIES = 256
"""Entries kept; the least recently used beyond this are removed."""


@dataclass(frozen=True)
class IndexedPackage:
    """What the index knows of a package: enough to name it and check the storage."""

    file_name: str
    digest: str
    size: int
    files: tuple[str, ...]
    generated_pyproject: bool


def index_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flame" / "packages"


def fingerprint(
    name: str, entries: Sequence[tuple[str, os.stat_result]], extra: Mapping[str, bytes]
) -> str:
    """The tree's fingerprint: see the module docstring."""
    h = hashlib.sha256(f"flame-package-index {INDEX_FORMAT}\0{name}\0".encode())
    for rel, st in entries:
        h.update(
            f"{rel}\0{st.st_size}\0{st.st_mode}\0{st.st_ino}\0{st.st_mtime_ns}\0"
            f"{st.st_ctime_ns}\n".encode()
        )
    for rel in sorted(extra):
        h.update(f"{rel}\0".encode() + hashlib.sha256(extra[rel]).digest())
    return h.hexdigest()


def lookup(key: str) -> IndexedPackage | None:
    path = index_dir() / f"{key}.json"
    try:
        doc = json.loads(path.read_text())
        found = IndexedPackage(
            file_name=str(doc["file_name"]),
            digest=str(doc["digest"]),
            size=int(doc["size"]),
            files=tuple(str(f) for f in doc["files"]),
            generated_pyproject=bool(doc["generated_pyproject"]),
        )
        os.utime(path)  # recently used
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("ignoring package index entry %s: %s", path, exc)
        return None
    return found


def remember(key: str, package: IndexedPackage) -> None:
    directory = index_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        doc = {
            "file_name": package.file_name,
            "digest": package.digest,
            "size": package.size,
            "files": list(package.files),
            "generated_pyproject": package.generated_pyproject,
        }
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".entry-")  # 0600
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, directory / f"{key}.json")
        _prune(directory)
    except OSError as exc:
        log.debug("cannot write the package index in %s: %s", directory, exc)


def _prune(directory: Path) -> None:
    entries = []
    for path in directory.glob("*.json"):
        try:
            entries.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    entries.sort(reverse=True)
    for _, path in entries[MAX_ENTRIES:]:
        path.unlink(missing_ok=True)


__all__ = ["IndexedPackage", "fingerprint", "index_dir", "lookup", "remember"]
