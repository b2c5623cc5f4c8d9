"""Tests of :func:`flmrun._archive.safe_extract` with real archives built on disk.

Good archives of every supported format must extract exactly; every malicious archive
must be refused with an UnsafeArchiveError that names the member, and must leave nothing
behind: no destination, no temporary directory next to it, nothing outside it.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from flmrun._archive import (
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL_BYTES,
    SUPPORTED_SUFFIXES,
    ExtractLimits,
    safe_extract,
)
from flmrun._errors import FlmrunError, UnsafeArchiveError

TAR_WRITE_MODES = {
    ".tar.gz": "w:gz",
    ".tgz": "w:gz",
    ".tar.bz2": "w:bz2",
    ".tar.xz": "w:xz",
    ".tar": "w",
}


@dataclass
class Entry:
    """One member to put into a test archive."""

    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, chr, fifo
    data: bytes = b""
    mode: int = 0o644
    link: str = ""


def write_tar(path: Path, entries: Iterable[Entry]) -> Path:
    suffix = next(s for s in TAR_WRITE_MODES if path.name.lower().endswith(s))
    with tarfile.open(path, TAR_WRITE_MODES[suffix]) as tf:  # type: ignore[call-overload]
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.mtime = 1_700_000_000
            data = None
            if e.kind == "file":
                info.size = len(e.data)
                data = io.BytesIO(e.data)
            elif e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.link
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.link
            elif e.kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif e.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tf.addfile(info, data)
    return path


def write_zip(path: Path, entries: Iterable[Entry]) -> Path:
    types = {
        "file": stat.S_IFREG,
        "dir": stat.S_IFDIR,
        "symlink": stat.S_IFLNK,
        "chr": stat.S_IFCHR,
        "fifo": stat.S_IFIFO,
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for e in entries:
            name = e.name + "/" if e.kind == "dir" and not e.name.endswith("/") else e.name
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
            info.create_system = 3
            info.external_attr = (types[e.kind] | e.mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, e.link.encode() if e.kind == "symlink" else e.data)
    return path


def write_archive(path: Path, entries: Iterable[Entry]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith((".zip", ".whl")):
        return write_zip(path, entries)
    return write_tar(path, entries)


@pytest.fixture
def arc(tmp_path: Path) -> Path:
    d = tmp_path / "archives"
    d.mkdir()
    return d


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def refuse(
    archive: Path,
    out: Path,
    *,
    member: str | None,
    reason: str,
    limits: ExtractLimits | None = None,
) -> UnsafeArchiveError:
    """Assert that extraction is refused for ``member`` and that nothing is left behind."""
    before = set(out.parent.rglob("*"))
    dest = out / "dest"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest, limits=limits)
    err = info.value
    assert isinstance(err, FlmrunError)
    assert reason in err.reason.lower(), err.reason
    if member is not None:
        assert err.member == member, str(err)
        assert repr(member) in str(err)
    assert not dest.exists() and not dest.is_symlink()
    assert list(out.iterdir()) == []  # no temporary directory left either
    assert set(out.parent.rglob("*")) == before  # nothing written anywhere else
    return err


BIG = os.urandom(2 * 1024**2 + 17)
GOOD = [
    Entry("pkg", "dir", mode=0o755),
    Entry("pkg/__init__.py", data=b"VALUE = 1\n"),
    Entry("pkg/sub/deep/mod.py", data=b"print('deep')\n"),  # parents implied
    Entry("bin/tool", data=b"#!/bin/sh\necho hi\n", mode=0o755),
    Entry("pkg/link.py", "symlink", link="sub/deep/mod.py"),
    Entry("pkg/sub/deep/up.py", "symlink", link="../../__init__.py"),
    Entry("alias", "symlink", link="pkg"),
    Entry("./pkg/big.bin", data=BIG),  # 2 MiB, crosses read chunks
]


@pytest.mark.parametrize("suffix", [*SUPPORTED_SUFFIXES, ".TAR.GZ", ".Zip"])
def test_good_archive_extracts(suffix: str, arc: Path, out: Path) -> None:
    archive = write_archive(arc / f"app{suffix}", GOOD)
    dest = out / "app"
    paths = safe_extract(archive, dest)
    assert paths == [
        dest / "pkg",
        dest / "pkg/__init__.py",
        dest / "pkg/sub/deep/mod.py",
        dest / "bin/tool",
        dest / "pkg/link.py",
        dest / "pkg/sub/deep/up.py",
        dest / "alias",
        dest / "pkg/big.bin",
    ]
    assert (dest / "pkg/__init__.py").read_bytes() == b"VALUE = 1\n"
    assert (dest / "pkg/sub/deep/mod.py").read_text() == "print('deep')\n"
    assert (dest / "pkg/big.bin").read_bytes() == BIG
    assert os.readlink(dest / "pkg/link.py") == "sub/deep/mod.py"
    assert (dest / "pkg/link.py").read_text() == "print('deep')\n"
    assert (dest / "pkg/sub/deep/up.py").read_text() == "VALUE = 1\n"
    assert (dest / "alias/__init__.py").read_text() == "VALUE = 1\n"
    assert os.access(dest / "bin/tool", os.X_OK)
    # owner-only: the executable bit survives, nothing for group or others
    assert stat.S_IMODE((dest / "bin/tool").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "pkg/__init__.py").stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "pkg/sub").stat().st_mode) == 0o700
    assert sorted(p.name for p in out.iterdir()) == ["app"]  # the temp dir was renamed


def test_tar_hardlink_inside_is_kept(arc: Path, out: Path) -> None:
    archive = write_archive(
        arc / "h.tar.gz",
        [Entry("a/f.txt", data=b"same"), Entry("b/g.txt", "hardlink", link="a/f.txt")],
    )
    safe_extract(archive, out / "d")
    assert (out / "d/b/g.txt").read_bytes() == b"same"
    assert os.path.samefile(out / "d/a/f.txt", out / "d/b/g.txt")


def test_empty_existing_destination_is_replaced(arc: Path, out: Path) -> None:
    archive = write_archive(arc / "a.zip", [Entry("x.txt", data=b"x")])
    (out / "d").mkdir()
    safe_extract(archive, out / "d")
    assert (out / "d/x.txt").read_bytes() == b"x"


def test_non_empty_destination_is_refused(arc: Path, out: Path) -> None:
    archive = write_archive(arc / "a.zip", [Entry("x.txt", data=b"x")])
    (out / "d").mkdir()
    (out / "d/keep").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract(archive, out / "d")
    assert (out / "d/keep").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["d"]


def test_setuid_setgid_sticky_bits_are_stripped(arc: Path, out: Path) -> None:
    archive = write_archive(
        arc / "s.tar",
        [
            Entry("sticky", "dir", mode=0o1777),
            Entry("sticky/suid", data=b"x", mode=0o4755),
            Entry("sgid", data=b"x", mode=0o2755),
            Entry("world", data=b"x", mode=0o666),
        ],
    )
    safe_extract(archive, out / "d")
    assert stat.S_IMODE((out / "d/sticky").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "d/sticky/suid").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "d/sgid").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "d/world").stat().st_mode) == 0o600


def test_zip_setuid_is_stripped(arc: Path, out: Path) -> None:
    archive = write_archive(arc / "s.zip", [Entry("suid", data=b"x", mode=0o6755)])
    safe_extract(archive, out / "d")
    assert stat.S_IMODE((out / "d/suid").stat().st_mode) == 0o700


# --------------------------------------------------------------------------- refusals

BOTH = [".tar.gz", ".zip"]


@pytest.mark.parametrize("suffix", BOTH)
@pytest.mark.parametrize("name", ["/tmp/flame-evil", "//etc/flame-evil"])
def test_absolute_path(suffix: str, name: str, arc: Path, out: Path) -> None:
    archive = write_archive(arc / f"a{suffix}", [Entry("ok.txt", data=b"x"), Entry(name)])
    refuse(archive, out, member=name, reason="absolute path")
    assert not Path(name).exists()


@pytest.mark.parametrize("suffix", BOTH)
@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "a/b/../../../evil.txt"])
def test_dotdot_traversal(suffix: str, name: str, arc: Path, out: Path) -> None:
    archive = write_archive(arc / f"a{suffix}", [Entry("a/ok.txt", data=b"x"), Entry(name)])
    refuse(archive, out, member=name, reason="'..' component")


@pytest.mark.parametrize("suffix", BOTH)
@pytest.mark.parametrize(
    "name",
    [
        "evil\nname.py",
        "dir\r/x.py",
        "pkg/\x1b[31mred.py",
        "tab\there.py",
        "del\x7f.py",
        "c1\x85.py",
    ],
)
def test_control_character_in_name(suffix: str, name: str, arc: Path, out: Path) -> None:
    archive = write_archive(arc / f"a{suffix}", [Entry("ok.txt", data=b"x"), Entry(name)])
    refuse(archive, out, member=name, reason="control character")


def test_control_character_in_symlink_target(arc: Path, out: Path) -> None:
    archive = write_archive(arc / "a.tar", [Entry("link", "symlink", link="x\ny")])
    refuse(archive, out, member="link", reason="control character")


def test_errors_use_the_given_name(arc: Path, out: Path) -> None:
    archive = write_archive(arc / ".tmp123.app.zip", [Entry("../evil.txt")])
    url = "https://example.com/app.zip"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, out / "d", name=url)
    assert info.value.archive == url
    assert url in str(info.value) and ".tmp123" not in str(info.value)
    odd = arc / ".tmp456.pkg.rar"
    odd.write_bytes(b"x")
    with pytest.raises(UnsafeArchiveError, match="unsupported archive type") as info:
        safe_extract(odd, out / "d", name="file:///pkgs/pkg.rar")
    assert info.value.archive == "file:///pkgs/pkg.rar"


@pytest.mark.parametrize("suffix", BOTH)
def test_symlink_escaping_dest(suffix: str, arc: Path, out: Path) -> None:
    archive = write_archive(
        arc / f"a{suffix}", [Entry("sub/link", "symlink", link="../../archives")]
    )
    refuse(archive, out, member="sub/link", reason="escapes the destination")


@pytest.mark.parametrize("suffix", BOTH)
def test_symlink_to_absolute_path(suffix: str, arc: Path, out: Path) -> None:
    archive = write_archive(arc / f"a{suffix}", [Entry("etc", "symlink", link="/etc")])
    refuse(archive, out, member="etc", reason="absolute path")


@pytest.mark.parametrize("suffix", BOTH)
def test_symlink_chain_escaping_through_another_link(suffix: str, arc: Path, out: Path) -> None:
    # Each link looks harmless on its own; together b -> a/.. -> <dest>/.. escapes.
    archive = write_archive(
        arc / f"a{suffix}",
        [Entry("a", "symlink", link="."), Entry("b", "symlink", link="a/..")],
    )
    err = refuse(archive, out, member=None, reason="")
    assert err.member == "b"
    assert "outside" in err.reason or "data_filter" in err.reason


@pytest.mark.parametrize("link", ["../../etc/passwd", "/etc/passwd"])
def test_hardlink_escaping(link: str, arc: Path, out: Path) -> None:
    archive = write_archive(arc / "a.tar.gz", [Entry("passwd", "hardlink", link=link)])
    err = refuse(archive, out, member="passwd", reason="hard link target")
    assert link in err.reason


def test_hardlink_to_file_not_in_archive(arc: Path, out: Path) -> None:
    archive = write_archive(arc / "a.tar", [Entry("x", "hardlink", link="missing.txt")])
    refuse(archive, out, member="x", reason="not a regular file extracted earlier")


@pytest.mark.parametrize("suffix", BOTH)
@pytest.mark.parametrize("target", [".", "sub", "../out"])
def test_file_written_through_extracted_symlink(
    suffix: str, target: str, arc: Path, out: Path
) -> None:
    entries = [Entry("sub", "dir"), Entry("link", "symlink", link=target)]
    entries.append(Entry("link/planted.txt", data=b"gotcha"))
    member = "link" if target == "../out" else "link/planted.txt"
    reason = "escapes" if target == "../out" else "passes through the symlink"
    refuse(write_archive(arc / f"a{suffix}", entries), out, member=member, reason=reason)


@pytest.mark.parametrize("suffix", BOTH)
def test_link_replacing_a_directory_is_refused(suffix: str, arc: Path, out: Path) -> None:
    entries = [Entry("d/f.txt", data=b"x"), Entry("d", "symlink", link=".")]
    refuse(write_archive(arc / f"a{suffix}", entries), out, member="d", reason="duplicate member")


@pytest.mark.parametrize("suffix", BOTH)
@pytest.mark.parametrize(("kind", "what"), [("chr", "character device"), ("fifo", "fifo")])
def test_device_and_fifo(suffix: str, kind: str, what: str, arc: Path, out: Path) -> None:
    archive = write_archive(
        arc / f"a{suffix}", [Entry("ok.txt", data=b"x"), Entry("dev/thing", kind)]
    )
    refuse(archive, out, member="dev/thing", reason=what)


@pytest.mark.parametrize("suffix", BOTH)
def test_too_many_members(suffix: str, arc: Path, out: Path) -> None:
    entries = [Entry(f"f{i}.txt", data=b"x") for i in range(6)]
    archive = write_archive(arc / f"a{suffix}", entries)
    refuse(archive, out, member="f5.txt", reason="too many members", limits=ExtractLimits(5))
    safe_extract(archive, out / "ok", limits=ExtractLimits(max_members=6))


@pytest.mark.parametrize("suffix", BOTH)
def test_oversize_member(suffix: str, arc: Path, out: Path) -> None:
    entries = [Entry("small", data=b"x" * 100), Entry("big", data=os.urandom(5000))]
    archive = write_archive(arc / f"a{suffix}", entries)
    limits = ExtractLimits(max_member_bytes=4096)
    err = refuse(archive, out, member="big", reason="size 5000 is over the limit", limits=limits)
    assert "4096" in err.reason


@pytest.mark.parametrize("suffix", BOTH)
def test_total_size_over_limit(suffix: str, arc: Path, out: Path) -> None:
    entries = [Entry(f"f{i}", data=os.urandom(3000)) for i in range(4)]
    limits = ExtractLimits(max_total_bytes=10_000)
    archive = write_archive(arc / f"a{suffix}", entries)
    refuse(archive, out, member="f3", reason="total size 12000 is over the limit", limits=limits)


@pytest.mark.parametrize("suffix", BOTH)
def test_zip_bomb_refused_by_ratio(suffix: str, arc: Path, out: Path) -> None:
    archive = write_archive(arc / f"bomb{suffix}", [Entry("zeros", data=bytes(50 * 1024**2))])
    assert archive.stat().st_size < 1024**2  # ~1000:1
    refuse(archive, out, member="zeros", reason="compression ratio")


def test_ratio_is_checked_while_streaming_not_only_on_headers(arc: Path, out: Path) -> None:
    # A tar.gz of many 512 KiB zero files: each header alone looks fine; the running total
    # of decompressed bytes must trip the ratio once past the grace allowance.
    entries = [Entry(f"z{i}", data=bytes(512 * 1024)) for i in range(8)]
    archive = write_archive(arc / "z.tar.gz", entries)
    limits = ExtractLimits(max_ratio=50.0, ratio_grace_bytes=1024**2)
    err = refuse(archive, out, member=None, reason="compression ratio", limits=limits)
    assert err.member is not None and err.member.startswith("z")


def _patch_zip_sizes(path: Path, fake_size: int) -> None:
    """Make the local and central headers of a one-member zip lie about its size."""
    data = bytearray(path.read_bytes())
    local = data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, fake_size)
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, fake_size)
    path.write_bytes(bytes(data))


def test_zip_header_lying_about_size(arc: Path, out: Path) -> None:
    archive = write_archive(arc / "liar.zip", [Entry("payload", data=bytes(10 * 1024**2))])
    _patch_zip_sizes(archive, 100)  # "only 100 bytes": passes every header check
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("payload").file_size == 100
    refuse(archive, out, member="payload", reason="corrupt")


def test_tar_header_claiming_more_data_than_present(arc: Path, out: Path) -> None:
    good = write_archive(arc / "t.tar", [Entry("f", data=b"y" * 4096)])
    truncated = arc / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:2048])  # header says 4096, 1536 bytes follow
    refuse(truncated, out, member="f", reason="corrupt")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.xz", ".tar.bz2", ".zip", ".whl"])
def test_garbage_is_refused_as_corrupt(suffix: str, arc: Path, out: Path) -> None:
    archive = arc / f"junk{suffix}"
    archive.write_bytes(os.urandom(4096))
    refuse(archive, out, member=None, reason="corrupt")


@pytest.mark.parametrize("name", ["pkg.rar", "pkg.gz", "pkg", "pkg.tar.gz.part", "pkg.7z"])
def test_unknown_extension(name: str, arc: Path, out: Path) -> None:
    archive = arc / name
    archive.write_bytes(b"whatever")
    err = refuse(archive, out, member=None, reason="unsupported archive type")
    assert err.member is None
    for suffix in SUPPORTED_SUFFIXES:
        assert suffix in str(err)


def test_default_limits() -> None:
    limits = ExtractLimits()
    assert limits.max_members == DEFAULT_MAX_MEMBERS == 100_000
    assert limits.max_total_bytes == DEFAULT_MAX_TOTAL_BYTES == 4 * 1024**3
    assert limits.max_member_bytes == DEFAULT_MAX_MEMBER_BYTES == 2 * 1024**3
    assert limits.max_ratio == DEFAULT_MAX_RATIO == 200.0
    with pytest.raises(ValueError, match="max_ratio"):
        ExtractLimits(max_ratio=0)
    with pytest.raises(AttributeError):
        limits.max_members = 1  # type: ignore[misc]


def test_error_pickles() -> None:
    import pickle

    err = UnsafeArchiveError("a.zip", "m", "bad")
    again = pickle.loads(pickle.dumps(err))
    assert (again.archive, again.member, again.reason, str(again)) == (
        "a.zip",
        "m",
        "bad",
        str(err),
    )
