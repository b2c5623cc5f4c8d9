"""Packaging the working directory for a Runner application.

The archive is a deterministic gzip tar: entries sorted, fixed mtimes, owners and
modes, and a gzip header without a timestamp, so an identical tree gives
identical bytes and the package is named by its content hash.  What goes in is
the directory minus the default excludes, ``package.excludes`` of flame.yaml,
the Runner's own excludes and a ``.flameignore`` file (gitignore syntax, ``!``
negation included).  A tree with no pyproject.toml, setup.py or setup.cfg gets a
minimal generated pyproject.toml that the installer recognises and skips.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec

from flamepy import _progress as progress
from flamepy._errors import InvalidArgumentError
from flamepy.runner._deps import EXTRA_FILE
from flamepy.runner._package_index import IndexedPackage, fingerprint, lookup, remember

log = logging.getLogger("flamepy.runner.package")

DEFAULT_EXCLUDES: tuple[str, ...] = (
    # Flame's own defaults
    ".venv",
    "__pycache__",
    ".gitignore",
    "*.pyc",
    # and the usual tool and build directories
    "venv",
    ".git",
    ".hg",
    ".svn",
    ".tox",
    ".nox",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".ipynb_checkpoints",
    "*.egg-info",
    "*.pyo",
    ".DS_Store",
    "node_modules",
    "/dist",
)
FLAMEIGNORE = ".flameignore"
DEFAULT_SIZE_BUDGET = 256 * 1024 * 1024
"""Uncompressed bytes a package may hold before packaging fails."""
FIXED_MTIME = 946_684_800  # 2000-01-01: after 1980, so wheels built from it are valid
PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")
LARGEST_SHOWN = 10


@dataclass(frozen=True)
class Package:
    """A package: its file name, content digest and what it holds; ``path`` is the
    archive, None when the package is known from the index and was not built."""

    file_name: str
    digest: str
    size: int
    files: tuple[str, ...]
    generated_pyproject: bool
    path: Path | None = None


@dataclass(frozen=True)
class Tree:
    """What a package of ``root`` would hold, found without reading any file."""

    root: Path
    name: str
    entries: tuple[tuple[str, Path, os.stat_result], ...]
    extra: dict[str, bytes]
    fingerprint: str
    has_project: bool


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip("-") or "flame-app"


def is_package_of(file_name: str, name: str) -> bool:
    """Whether ``file_name`` is a package that :func:`build_package` made for ``name``."""
    return (
        re.fullmatch(re.escape(_normalize(name)) + r"-[0-9a-f]{16}\.tar\.gz", file_name) is not None
    )


def generated_pyproject(name: str, dependencies: Sequence[str]) -> bytes:
    """A minimal project: no modules (src/ is on PYTHONPATH), the Runner's dependencies."""
    deps = ", ".join(f'"{d}"' for d in sorted(dependencies))
    return (
        "[project]\n"
        f'name = "{_normalize(name)}"\n'
        'version = "0.1.0"\n'
        'requires-python = ">=3.9"\n'
        f"dependencies = [{deps}]\n\n"
        "[build-system]\n"
        'requires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[tool.setuptools]\n"
        "py-modules = []\n"
        "packages = []\n\n"
        "[tool.flame]\n"
        "generated = true\n"
    ).encode()


def exclude_spec(root: Path, excludes: Sequence[str]) -> pathspec.PathSpec[Any]:
    lines = [*DEFAULT_EXCLUDES, *excludes]
    ignore_file = root / FLAMEIGNORE
    if ignore_file.is_file():
        lines.extend(ignore_file.read_text().splitlines())
    return pathspec.GitIgnoreSpec.from_lines(lines)


def collect(root: Path, spec: pathspec.PathSpec[Any]) -> Iterator[tuple[str, Path]]:
    """Relative POSIX paths (sorted) of the files and links to package."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        kept = []
        for d in sorted(dirnames):
            rel = (rel_dir / d).as_posix()
            full = Path(dirpath) / d
            if spec.match_file(rel + "/") or full.is_symlink():
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in sorted(filenames):
            rel = (rel_dir / f).as_posix()
            if not spec.match_file(rel):
                yield rel, Path(dirpath) / f


def _check_budget(entries: list[tuple[str, Path, int]], budget: int) -> None:
    total = sum(size for _, _, size in entries)
    if total <= budget:
        return
    largest = sorted(entries, key=lambda e: e[2], reverse=True)[:LARGEST_SHOWN]
    listing = "\n".join(f"  {size / 1e6:10.1f} MB  {rel}" for rel, _, size in largest)
    raise InvalidArgumentError(
        f"the package would hold {total / 1e6:.1f} MB, over the {budget / 1e6:.1f} MB budget; "
        f"the largest entries are:\n{listing}\nexclude them with Runner(excludes=[...]), "
        f"package.excludes in flame.yaml or a {FLAMEIGNORE} file, or raise the budget"
    )


def _tarinfo(name: str, *, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_entry(tar: tarfile.TarFile, rel: str, path: Path, root: Path) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        resolved = (path.parent / target).resolve()
        if os.path.isabs(target) or not resolved.is_relative_to(root.resolve()):
            log.warning("skipping %s: its link points outside the package", rel)
            return
        info = _tarinfo(rel, mode=0o777)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)
        return
    if not stat.S_ISREG(st.st_mode):
        log.warning("skipping %s: not a regular file", rel)
        return
    mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    with path.open("rb") as fh:
        tar.addfile(_tarinfo(rel, size=st.st_size, mode=mode), fh)


def scan_tree(
    root: Path,
    name: str,
    out_dir: Path | None = None,
    *,
    excludes: Sequence[str] = (),
    dependencies: Sequence[str] = (),
    size_budget: int = DEFAULT_SIZE_BUDGET,
) -> Tree:
    """The files ``root`` would package (never ``out_dir``), checked against the budget."""
    root = root.resolve()
    if not root.is_dir():
        raise InvalidArgumentError(f"cannot package {root}: not a directory")
    spec = exclude_spec(root, excludes)
    out_resolved = out_dir.resolve() if out_dir is not None else None
    entries = []
    for rel, path in collect(root, spec):
        if out_resolved is not None and path.resolve().is_relative_to(out_resolved):
            continue  # never package our own output
        entries.append((rel, path, path.lstat()))
    _check_budget([(rel, path, st.st_size) for rel, path, st in entries], size_budget)
    has_project = any((root / f).is_file() for f in PROJECT_FILES)
    extra = {} if has_project else {"pyproject.toml": generated_pyproject(name, dependencies)}
    if has_project and dependencies:
        # The user's project stays as it is; the Runner's dependencies go beside it.
        mine = [rel for rel, _, _ in entries if rel == EXTRA_FILE]
        known = (root / EXTRA_FILE).read_text(encoding="utf-8") if mine else ""
        lines = [*known.splitlines(), *sorted(dependencies)]
        extra[EXTRA_FILE] = ("\n".join(line for line in lines if line.strip()) + "\n").encode()
        entries = [e for e in entries if e[0] != EXTRA_FILE]
    key = fingerprint(name, [(rel, st) for rel, _, st in entries], extra)
    return Tree(root, name, tuple(entries), extra, key, has_project)


def indexed_package(tree: Tree) -> Package | None:
    """The package this unchanged tree built before, if the index remembers it."""
    found = lookup(tree.fingerprint)
    if found is None:
        return None
    return Package(
        found.file_name, found.digest, found.size, found.files, found.generated_pyproject
    )


def build_tree(tree: Tree, out_dir: Path) -> Package:
    """Archive ``tree`` into ``out_dir/<name>-<digest16>.tar.gz`` and remember it."""
    total = sum(st.st_size for _, _, st in tree.entries)
    shown = progress.bar(total, "packaging", "B", minimum=progress.MIN_BYTES)
    try:
        return _build(tree, out_dir, shown)
    finally:
        if shown is not None:
            shown.close()


def _build(tree: Tree, out_dir: Path, shown: progress.Bar | None) -> Package:
    names = sorted([rel for rel, _, _ in tree.entries] + list(tree.extra))
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:  # noqa: SIM117
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            by_name = {rel: path for rel, path, _ in tree.entries}
            sizes = {rel: st.st_size for rel, _, st in tree.entries}
            for rel in names:
                if rel in tree.extra:
                    data = tree.extra[rel]
                    tar.addfile(_tarinfo(rel, size=len(data)), io.BytesIO(data))
                else:
                    _add_entry(tar, rel, by_name[rel], tree.root)
                    if shown is not None:
                        shown.add(sizes[rel])
    data = raw.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_normalize(tree.name)}-{digest[:16]}.tar.gz"
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    package = Package(path.name, digest, len(data), tuple(names), not tree.has_project, path)
    # Remembered only if no file changed while it was read: a changed file has a new
    # ctime, so the next scan misses the index and builds again.
    try:
        now = [(rel, path.lstat()) for rel, path, _ in tree.entries]
    except OSError:  # one was removed
        return package
    if fingerprint(tree.name, now, tree.extra) == tree.fingerprint:
        remember(
            tree.fingerprint,
            IndexedPackage(
                package.file_name, digest, package.size, package.files, package.generated_pyproject
            ),
        )
    return package


def build_package(
    root: Path,
    name: str,
    out_dir: Path,
    *,
    excludes: Sequence[str] = (),
    dependencies: Sequence[str] = (),
    size_budget: int = DEFAULT_SIZE_BUDGET,
) -> Package:
    """Archive ``root`` into ``out_dir/<name>-<digest16>.tar.gz``."""
    tree = scan_tree(
        root, name, out_dir, excludes=excludes, dependencies=dependencies, size_budget=size_budget
    )
    return build_tree(tree, out_dir)
