"""Safe extraction of application package archives.

:func:`safe_extract` unpacks a ``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz``/``.tar``/
``.zip``/``.whl`` file (chosen by name, case-insensitively) into a directory that must not
exist yet (or be empty).  Everything goes into a fresh temporary directory next to the
destination, which is renamed into place only when the whole archive was accepted, so a
refused or broken archive leaves nothing behind.

Every member is checked before anything is written for it, and the archive is refused
with :class:`~flmrun._errors.UnsafeArchiveError` (naming the member and the reason) when a
member:

* has an absolute name, a ``..`` component, a backslash, a NUL or another control
  character (a newline, an escape...) in its name;
* passes through a symlink (or a file) extracted earlier, or collides with an earlier
  member of another type;
* is a symlink with an absolute target or a control character in it, or whose target,
  resolved against the member's own directory, leaves the destination (after extraction
  every symlink is also resolved on disk, so chains of individually harmless links
  cannot escape either);
* is a hard link whose target (a member name, relative to the archive root as in tar) is
  not a regular file extracted earlier from the same archive;
* is anything other than a regular file, a directory or such a link (devices, FIFOs...);
* would exceed one of the :class:`ExtractLimits`.  Sizes are checked against the headers
  first and then against the bytes actually decompressed, while streaming, so a header
  that lies cannot smuggle more data through; a member whose data does not match its
  header is refused as corrupt.

Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``; their mode keeps the permission
bits (the exec bit in particular) but drops setuid/setgid/sticky and group/other write.
Owners are never restored.  Tar archives additionally go through
:func:`tarfile.data_filter` as a second, independent layer.

Errors name the archive by its path, or by the ``name`` given to :func:`safe_extract`
(the URL it was downloaded from, say).
"""

from __future__ import annotations

import functools
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from flmrun._errors import UnsafeArchiveError

__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_MEMBER_BYTES",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_RATIO_GRACE_BYTES",
    "SUPPORTED_SUFFIXES",
    "ExtractLimits",
    "archive_suffix",
    "safe_extract",
]

DEFAULT_MAX_MEMBERS = 100_000
"""At most this many members (files, directories and links) per archive."""
DEFAULT_MAX_TOTAL_BYTES = 4 * 1024**3
"""At most 4 GiB of file data in total."""
DEFAULT_MAX_MEMBER_BYTES = 2 * 1024**3
"""At most 2 GiB for one file."""
DEFAULT_MAX_RATIO = 200.0
"""At most 200 bytes of file data per byte of archive (the zip-bomb guard)."""
DEFAULT_RATIO_GRACE_BYTES = 1024**2
"""The ratio is only enforced once more than 1 MiB has been extracted: tiny archives of
repetitive text legitimately compress very well."""

SUPPORTED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip", ".whl")
_TarMode = Literal["r|", "r|gz", "r|bz2", "r|xz"]
_TAR_MODES: dict[str, _TarMode] = {
    ".tar.gz": "r|gz",
    ".tgz": "r|gz",
    ".tar.bz2": "r|bz2",
    ".tar.xz": "r|xz",
}
_CHUNK = 1024 * 1024
_MAX_LINK_TARGET = 4096
# What the decompressors raise for broken input (bz2 raises a bare OSError).
_CORRUPT: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
    EOFError,
    NotImplementedError,
)
_CORRUPT_OR_OS: tuple[type[BaseException], ...] = (*_CORRUPT, OSError)

Kind = Literal["file", "dir", "symlink", "hardlink", "other"]


@dataclass(frozen=True)
class ExtractLimits:
    """Limits enforced by :func:`safe_extract`; all sizes are of uncompressed file data."""

    max_members: int = DEFAULT_MAX_MEMBERS
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    ratio_grace_bytes: int = DEFAULT_RATIO_GRACE_BYTES

    def __post_init__(self) -> None:
        for name in ("max_members", "max_total_bytes", "max_member_bytes", "max_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ExtractLimits.{name} must be positive")
        if self.ratio_grace_bytes < 0:
            raise ValueError("ExtractLimits.ratio_grace_bytes must not be negative")


@dataclass
class _Member:
    """One archive member, independent of the archive format."""

    name: str
    kind: Kind
    mode: int
    size: int
    linkname: str = ""
    mtime: float | None = None
    what: str = ""  # for kind == "other": what it is
    open: Callable[[], IO[bytes]] | None = None


def archive_suffix(archive: Path, *, name: str | None = None) -> str:
    """The supported suffix ``archive``'s name ends with; UnsafeArchiveError if none.

    ``name`` is what the error calls the archive (default: its path)."""
    lower = archive.name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise UnsafeArchiveError(
        name or str(archive),
        None,
        f"unsupported archive type; supported: {', '.join(SUPPORTED_SUFFIXES)}",
    )


def safe_extract(
    archive: Path, dest: Path, *, limits: ExtractLimits | None = None, name: str | None = None
) -> list[Path]:
    """Extract ``archive`` into ``dest`` (which must not exist, or be an empty directory).

    Returns the paths of the extracted members under ``dest`` in archive order (parent
    directories created implicitly are not listed).  Raises
    :class:`~flmrun._errors.UnsafeArchiveError` for any refused archive (its ``archive``
    is ``name`` when given, else the path), and :class:`FileExistsError` when ``dest``
    is a non-empty directory or not a directory.
    """
    archive, dest = Path(archive), Path(dest)
    suffix = archive_suffix(archive, name=name)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise FileExistsError(f"extraction destination {dest} exists and is not empty")
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        extractor = _Extractor(archive, tmp, limits or ExtractLimits(), name or str(archive))
        if suffix in (".zip", ".whl"):
            extractor.extract_zip()
        else:
            extractor.extract_tar(_TAR_MODES.get(suffix, "r|"))
        extractor.check_links()
        os.chmod(tmp, 0o700)
        if dest.is_dir():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [dest / rel for rel in extractor.created]


class _Extractor:
    """Validates and writes members one at a time into ``root``."""

    def __init__(self, archive: Path, root: Path, limits: ExtractLimits, name: str) -> None:
        self.archive = archive
        self.name = name  # what errors call the archive
        self.root = root
        self.limits = limits
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.members = 0
        self.total = 0
        self.kinds: dict[str, Kind] = {}  # normalized relative path -> what is on disk
        self.links: list[str] = []
        self.created: list[str] = []
        self.created_set: set[str] = set()
        self.current: str | None = None  # the member being processed, for error messages

    def fail(self, member: str | None, reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(self.name, member, reason)

    # -- formats ----------------------------------------------------------------------

    def extract_tar(self, mode: _TarMode) -> None:
        data_filter = getattr(tarfile, "data_filter", None)
        try:
            with open(self.archive, "rb") as raw, tarfile.open(fileobj=raw, mode=mode) as tf:
                for info in tf:
                    self.current = info.name
                    member = _tar_member(tf, info)
                    self.add(member, functools.partial(_apply_filter, data_filter, info, self))
        except UnsafeArchiveError:
            raise
        except _CORRUPT as exc:
            raise self.fail(self.current, f"corrupt or truncated archive: {exc}") from exc

    def extract_zip(self) -> None:
        try:
            with zipfile.ZipFile(self.archive) as zf:
                infos = zf.infolist()
                self.precheck_zip(infos)
                for info in infos:
                    self.current = info.filename
                    self.add(_zip_member(zf, info, self))
        except UnsafeArchiveError:
            raise
        except _CORRUPT_OR_OS as exc:
            if isinstance(exc, OSError) and not _is_decode_error(exc):
                raise
            raise self.fail(self.current, f"corrupt or truncated archive: {exc}") from exc

    def precheck_zip(self, infos: list[zipfile.ZipInfo]) -> None:
        """Refuse a zip on its central directory alone, before writing anything."""
        limits = self.limits
        if len(infos) > limits.max_members:
            raise self.fail(
                infos[limits.max_members].filename,
                f"too many members: more than {limits.max_members}",
            )
        declared = 0
        for info in infos:
            if info.flag_bits & 0x1:
                raise self.fail(info.filename, "encrypted members are not supported")
            declared += info.file_size
            self.check_sizes(info.filename, info.file_size, declared, "declared ")

    # -- members ----------------------------------------------------------------------

    def add(self, member: _Member, extra_check: Callable[[], None] | None = None) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.fail(member.name, f"too many members: more than {self.limits.max_members}")
        rel = self.normalize(member.name)
        if member.kind == "other":
            raise self.fail(member.name, f"{member.what} members are not allowed")
        if not rel:
            if member.kind == "dir":
                return
            raise self.fail(member.name, "member names the destination directory itself")
        parent = self.make_parents(member.name, rel)
        existing = self.kinds.get(rel)
        if existing is not None and not (existing == member.kind and existing in ("dir", "file")):
            raise self.fail(member.name, f"duplicate member: already extracted as a {existing}")
        target = ""
        if member.kind == "symlink":
            self.check_symlink(member, parent)
        elif member.kind == "hardlink":
            target = self.normalize(member.linkname, member=member.name)
            if self.kinds.get(target) != "file":
                raise self.fail(
                    member.name,
                    f"hard link target {member.linkname!r} is not a regular file extracted "
                    "earlier from this archive",
                )
        if extra_check is not None:
            extra_check()
        path = self.root / rel
        if member.kind == "dir":
            if existing is None:
                os.mkdir(path, 0o700)
            _chmod_dir(path, 0o700)  # owner-only, whatever the archive says
        elif member.kind == "file":
            self.write_file(member, path, replace=existing is not None)
        elif member.kind == "symlink":
            os.symlink(member.linkname, path)
            self.links.append(rel)
        else:
            os.link(self.root / target, path, follow_symlinks=False)
        self.kinds[rel] = member.kind
        if rel not in self.created_set:
            self.created_set.add(rel)
            self.created.append(rel)

    def normalize(self, name: str, *, member: str | None = None) -> str:
        """``name`` as a clean relative POSIX path ('' for the root) or refuse it.

        ``member`` is given when ``name`` is a hard link target rather than a member name.
        """
        what = f"hard link target {name!r}" if member is not None else "member name"
        member = name if member is None else member
        if not name or "\x00" in name:
            raise self.fail(member, f"empty {what} or NUL byte in it")
        control = _control_character(name)
        if control is not None:
            raise self.fail(member, f"control character {control!r} in {what}")
        if "\\" in name:
            raise self.fail(member, f"backslash in {what}")
        if name.startswith("/"):
            raise self.fail(member, f"absolute path in {what}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.fail(member, f"'..' component in {what} (path traversal)")
        return "/".join(parts)

    def make_parents(self, name: str, rel: str) -> str:
        """Create the parent directories of ``rel``, never through a link or a file."""
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            kind = self.kinds.get(prefix)
            if kind is None:
                os.mkdir(self.root / prefix, 0o700)
                self.kinds[prefix] = "dir"
            elif kind != "dir":
                raise self.fail(name, f"path passes through the {kind} {prefix!r}")
            if not stat.S_ISDIR(os.lstat(self.root / prefix).st_mode):  # belt and braces
                raise self.fail(name, f"parent {prefix!r} is not a plain directory")
        return "/".join(parts)

    def check_symlink(self, member: _Member, parent: str) -> None:
        target = member.linkname
        if not target or "\x00" in target:
            raise self.fail(member.name, "empty symlink target or NUL byte in it")
        control = _control_character(target)
        if control is not None:
            raise self.fail(member.name, f"control character {control!r} in symlink target")
        if target.startswith("/"):
            raise self.fail(member.name, f"symlink to an absolute path {target!r}")
        resolved = posixpath.normpath(posixpath.join(parent, target))
        if resolved == ".." or resolved.startswith("../"):
            raise self.fail(member.name, f"symlink target {target!r} escapes the destination")

    def check_links(self) -> None:
        """Resolve every extracted symlink on disk: chains must stay inside as well."""
        real_root = os.path.realpath(self.root)
        for rel in self.links:
            real = os.path.realpath(self.root / rel)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise self.fail(rel, "symlink resolves outside the destination through other links")

    def check_sizes(self, name: str, member_bytes: int, total: int, how: str = "") -> None:
        limits = self.limits
        if member_bytes > limits.max_member_bytes:
            raise self.fail(
                name, f"{how}size {member_bytes} is over the limit of {limits.max_member_bytes}"
            )
        if total > limits.max_total_bytes:
            raise self.fail(
                name, f"{how}total size {total} is over the limit of {limits.max_total_bytes}"
            )
        if total > limits.ratio_grace_bytes and total > limits.max_ratio * self.archive_bytes:
            ratio = total / self.archive_bytes
            raise self.fail(
                name,
                f"{how}compression ratio {ratio:.0f} is over the limit of {limits.max_ratio:g} "
                "(zip bomb?)",
            )

    def write_file(self, member: _Member, path: Path, *, replace: bool) -> None:
        self.check_sizes(member.name, member.size, self.total + member.size, "declared ")
        if replace:
            os.unlink(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        written = 0
        assert member.open is not None
        with os.fdopen(fd, "wb") as out, member.open() as src:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except OSError as exc:
                    if not _is_decode_error(exc):
                        raise
                    raise self.fail(member.name, f"corrupt data: {exc}") from exc
                if not chunk:
                    break
                written += len(chunk)
                self.total += len(chunk)
                self.check_sizes(member.name, written, self.total)
                out.write(chunk)
            if written != member.size:
                raise self.fail(
                    member.name,
                    f"corrupt archive: header declares {member.size} bytes but {written} were read",
                )
            out.flush()
            os.fchmod(out.fileno(), (member.mode & 0o700) | 0o600)  # owner-only
            if member.mtime is not None:
                os.utime(out.fileno(), (member.mtime, member.mtime))


def _control_character(text: str) -> str | None:
    """The first control character (C0, DEL or C1: newline, escape...) in ``text``."""
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def _chmod_dir(path: Path, mode: int) -> None:
    """chmod a directory without ever following a symlink in its place."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _is_decode_error(exc: OSError) -> bool:
    """True for the bare OSError bz2 raises on bad data (no errno), not for I/O errors."""
    return exc.errno is None


def _apply_filter(
    data_filter: Callable[[tarfile.TarInfo, str], object] | None,
    info: tarfile.TarInfo,
    extractor: _Extractor,
) -> None:
    """Run :func:`tarfile.data_filter` (where this Python has it) as an extra layer."""
    if data_filter is None:
        return
    try:
        data_filter(info, str(extractor.root))
    except tarfile.TarError as exc:  # FilterError and its subclasses
        raise extractor.fail(info.name, f"refused by tarfile.data_filter: {exc}") from exc


def _tar_member(tf: tarfile.TarFile, info: tarfile.TarInfo) -> _Member:
    kind: Kind
    what = ""
    if info.isreg():
        kind = "file"
    elif info.isdir():
        kind = "dir"
    elif info.issym():
        kind = "symlink"
    elif info.islnk():
        kind = "hardlink"
    else:
        kind = "other"
        what = {
            tarfile.CHRTYPE: "character device",
            tarfile.BLKTYPE: "block device",
            tarfile.FIFOTYPE: "FIFO",
        }.get(info.type, f"tar type {info.type!r}")

    def opener() -> IO[bytes]:
        handle = tf.extractfile(info)
        assert handle is not None
        return handle

    return _Member(
        name=info.name,
        kind=kind,
        mode=info.mode,
        size=info.size if kind == "file" else 0,
        linkname=info.linkname,
        mtime=float(info.mtime),
        what=what,
        open=opener if kind == "file" else None,
    )


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, extractor: _Extractor) -> _Member:
    mode = info.external_attr >> 16
    fmt = stat.S_IFMT(mode)
    perms = mode & 0o7777 or 0o644
    if info.is_dir() or fmt == stat.S_IFDIR:
        return _Member(info.filename, "dir", perms, 0)
    if fmt in (0, stat.S_IFREG):
        return _Member(
            info.filename, "file", perms, info.file_size, open=lambda: zf.open(info, "r")
        )
    if fmt == stat.S_IFLNK:
        with zf.open(info, "r") as handle:
            raw = handle.read(_MAX_LINK_TARGET + 1)
        if len(raw) > _MAX_LINK_TARGET:
            raise extractor.fail(info.filename, "symlink target is too long")
        return _Member(info.filename, "symlink", perms, 0, linkname=os.fsdecode(raw))
    what = {
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "FIFO",
        stat.S_IFSOCK: "socket",
    }.get(fmt, f"file type {fmt:o}")
    return _Member(info.filename, "other", perms, 0, what=what)
