"""Same-host transfers on a transfer directory too small for a value.

A transfer file is written through a shared mapping.  On a full ``tmpfs`` (a
64 MB ``/dev/shm``, Docker's default) a page of it cannot be allocated when it
is written, and the kernel kills the writer with SIGBUS: exit code 135 for a
client, "exited with code -7" for an instance returning a result.  Writers now
reserve the space first (``posix_fallocate``) and send the value over Flight
when they cannot.

The real test mounts a 16 MiB tmpfs (root only; skipped elsewhere), points a
real local cluster's transfer directory at it (``FLAME_LOCAL_TRANSFER_DIR``) and
has a client process put, get and pass to a Runner service values larger than
the whole file system.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from flame_testkit import ClusterThread, LocalClusterConfig
from flame_testkit._cache_local import TRANSFER_PARENT_ENV
from flame_testkit._cache_server import CacheServer
from flamepy._cache import local as _cache_local
from flamepy._cache.local import RECYCLE_MIN_BYTES, TransferDir
from flamepy._cache.maps import Mapped

MIB = 1 << 20
TMPFS_BYTES = 16 * MIB
CLIENT_TIMEOUT = 300


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "shm"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


CLIENT = textwrap.dedent(
    """
    import os, sys, uuid
    import numpy as np
    from flamepy import Runner
    from flamepy.core import cache
    import spacelib

    big = os.urandom(24 * 1024 * 1024)          # larger than the whole tmpfs
    array = np.arange(3 * 1024 * 1024, dtype=np.float64)  # 24 MiB as a tensor
    ref = cache.put_object("app/ssn", big)
    assert cache.get_object(ref) == big
    tensor_ref = cache.put_object("app/ssn", array)
    np.testing.assert_array_equal(cache.get_object(tensor_ref), array)
    small = os.urandom(2 * 1024 * 1024)         # fits: still goes as a file
    small_ref = cache.put_object("app/ssn", small)
    assert cache.get_object(small_ref) == small
    with Runner(f"space-{uuid.uuid4().hex[:8]}") as rr:
        echoed = rr.service(spacelib.echo)(big).get(120)   # argument and result
        assert echoed == big[::-1]
        made = rr.service(spacelib.make)(24 * 1024 * 1024).get(120)  # a result only
        assert made == b"r" * (24 * 1024 * 1024)
    print("ALL OK")
    """
)

LIB = textwrap.dedent(
    """
    def echo(data):
        return bytes(reversed(data))


    def make(size):
        return b"r" * size
    """
)


def test_values_larger_than_the_transfer_filesystem_go_over_flight(
    small_tmpfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRANSFER_PARENT_ENV, str(small_tmpfs))
    project = tmp_path / "project"
    project.mkdir()
    (project / "spacelib.py").write_text(LIB)
    (project / "client.py").write_text(CLIENT)
    config = LocalClusterConfig(cache_local_transfer=True, delay_release=1, kill_grace=2.0)
    with ClusterThread(config) as cluster:
        assert cluster.cluster.cache is not None
        local_dir = cluster.cluster.cache.local_dir
        assert local_dir is not None and Path(local_dir).parent == small_tmpfs
        env = cluster.client_env()
        env["PYTHONPATH"] = os.pathsep.join([str(project), env.get("PYTHONPATH", "")])
        done = subprocess.run(
            [sys.executable, "client.py"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"the client exited with {done.returncode}:\n{output}"
        assert "ALL OK" in done.stdout
        logs = "".join(
            p.read_text(errors="replace") for p in cluster.cluster.work_dir.rglob("*.log")
        )
        assert "exited with code -7" not in logs and "SIGBUS" not in logs
        assert "exited with code -7" not in output
        # The small value did go as a file: the directory is in use, not bypassed.
        assert any(Path(local_dir).rglob("*.obj")) or any(Path(local_dir).rglob("*.free"))
    assert cluster.leftover_processes() == []


def test_a_failed_reservation_removes_the_file_and_maps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no small file system can be made: the reservation fails as on a full
    one, and the writer gets an OSError (then Flight) instead of a mapping."""
    directory = TransferDir(tmp_path)
    calls: list[int] = []

    def full(fd: int, offset: int, size: int) -> None:
        calls.append(size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def never(*args: object) -> object:
        raise AssertionError("a transfer file was mapped without its space reserved")

    monkeypatch.setattr(os, "posix_fallocate", full)
    monkeypatch.setattr(Mapped, "open", never)
    size = 2 * RECYCLE_MIN_BYTES
    with pytest.raises(OSError) as raised:
        directory.write(pa.py_buffer(b"x" * size))
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        directory.write_value(b"y" * size)
    assert calls and all(n >= size for n in calls)
    assert list(tmp_path.iterdir()) == []  # the files are gone


def test_a_reused_file_that_must_grow_is_reserved_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled file shorter than the value grows: that growth is reserved too."""
    (tmp_path / _cache_local.POOL_DIR).mkdir()
    pooled = tmp_path / _cache_local.POOL_DIR / f"{'a' * 32}.free"
    pooled.write_bytes(b"z" * RECYCLE_MIN_BYTES)
    pooled.chmod(0o600)
    directory = TransferDir(tmp_path)
    monkeypatch.setattr(_cache_local, "_unused", lambda fd: True)  # no reader has it
    reserved: list[int] = []
    real = os.posix_fallocate

    def fallocate(fd: int, offset: int, size: int) -> None:
        reserved.append(size)
        if size > RECYCLE_MIN_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    with pytest.raises(OSError):
        directory.write(pa.py_buffer(b"x" * (2 * RECYCLE_MIN_BYTES)))
    assert reserved == [2 * RECYCLE_MIN_BYTES]
    assert not pooled.exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_transfer_dir_setting_that_is_no_directory_is_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-dir"
    monkeypatch.setenv(TRANSFER_PARENT_ENV, str(missing))
    server = CacheServer(local_transfer=True)
    with pytest.raises(ValueError, match=rf"{TRANSFER_PARENT_ENV}=.*no-such-dir.* not a writable"):
        server.start()
    server.stop()
    monkeypatch.setenv(TRANSFER_PARENT_ENV, str(tmp_path))
    with CacheServer(local_transfer=True) as started:
        assert started.local_dir is not None and Path(started.local_dir).parent == tmp_path
