"""Kept writer mappings (``_cache.maps``) and the two-core copy (``_cache.copying``), against
a real cache server, real files on /dev/shm and real other processes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from _cache_helpers import objects, pooled, use, user_module

from flame_testkit._cache_server import CacheServer
from flamepy._cache import client as _cache_client
from flamepy._cache.codec import MAGIC_PICKLE, decode_opaque
from flamepy._cache.copying import PARALLEL_MIN, bytes_at
from flamepy._cache.local import RECYCLE_MIN_BYTES
from flamepy._cache.maps import (
    MAX_BYTES,
    MAX_FILES,
    WRITER_MAPS,
    Mapped,
    WriterMaps,
    keep_mappings,
)
from flamepy.core import cache

SIZE = 4 * RECYCLE_MIN_BYTES


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[CacheServer]:
    srv = CacheServer(port=0, local_transfer=True, compression=None)
    srv.start()
    use(srv, monkeypatch)
    keep_mappings()  # the defaults
    yield srv
    keep_mappings(0)
    _cache_client.reset_clients()
    srv.stop()


def test_keeping_is_on_by_default_and_can_be_turned_off(server: CacheServer) -> None:
    script = "from flamepy._cache.maps import WRITER_MAPS as M; print(M.max_files, M.max_bytes)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.split() == [str(MAX_FILES), str(MAX_BYTES)]
    keep_mappings(0)
    cache.put_object("app/ssn", os.urandom(SIZE))
    assert len(WRITER_MAPS) == 0
    with pytest.raises(ValueError, match=">= 0"):
        keep_mappings(-1)


def _inode(server: CacheServer) -> int:
    [name] = objects(server)
    return (Path(server.local_dir or "") / name).stat().st_ino


def test_a_big_write_keeps_its_mapping_and_the_next_write_reuses_it(
    server: CacheServer,
) -> None:
    first = cache.put_object("app/ssn", os.urandom(SIZE))
    assert len(WRITER_MAPS) == 1  # the file we wrote stays open and mapped
    inode = _inode(server)
    cache.delete_objects(first.key)
    _cache_client.reset_clients()  # drop the client's own view of what it put
    array = np.random.default_rng(2).random(SIZE // 8)
    second = cache.put_object("app/ssn", array)
    assert _inode(server) == inode and len(WRITER_MAPS) == 1  # same file, same mapping
    _cache_client.reset_clients()
    np.testing.assert_array_equal(cache.get_object(second), array)
    data = os.urandom(SIZE // 2)  # smaller: the file and the mapping shrink
    cache.delete_objects(second.key)
    _cache_client.reset_clients()
    third = cache.put_object("app/ssn", data)
    _cache_client.reset_clients()
    assert cache.get_object(third) == data


READER = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
view = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
os.close(fd)
print("mapped", flush=True)
sys.stdin.readline()
sys.stdout.write(view[-17:-1].hex())  # before the pickle's STOP
"""


def test_a_file_another_process_maps_is_not_written_through_our_kept_mapping(
    server: CacheServer,
) -> None:
    data = os.urandom(SIZE)
    ref = cache.put_object("app/ssn", data)
    [name] = objects(server)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(Path(server.local_dir or "") / name)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "mapped\n"
        cache.delete_objects(ref.key)  # to the pool, still mapped over there
        _cache_client.reset_clients()
        assert len(pooled(server)) == 1
        cache.put_object("app/ssn", b"\0" * SIZE)  # must not claim that file
        assert len(pooled(server)) == 1  # put back, untouched
        out, _ = reader.communicate("\n", timeout=30)
    finally:
        reader.kill()
        reader.wait()
    assert out == data[-16:].hex()


def test_kept_files_that_lost_their_name_are_let_go(server: CacheServer) -> None:
    cache.put_object("app/ssn", os.urandom(SIZE))
    assert len(WRITER_MAPS) == 1
    [kept] = list(WRITER_MAPS._kept.values())
    fd = kept.fd
    server.stop()  # removes the transfer directory: the file has no name now
    _cache_client.reset_clients()  # a client's close prunes
    assert len(WRITER_MAPS) == 0
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: its memory is not held


def test_writer_maps_are_bounded_oldest_first(tmp_path: Path) -> None:
    maps = WriterMaps(max_files=2, max_bytes=3 * RECYCLE_MIN_BYTES)
    made = []
    for i in range(3):
        fd = os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT, 0o600)
        made.append(Mapped.open(fd, RECYCLE_MIN_BYTES))
        maps.keep(made[-1])
    assert len(maps) == 2 and maps.take(made[0].file_id) is None  # evicted and closed
    with pytest.raises(OSError):
        os.fstat(made[0].fd)
    big = Mapped.open(
        os.open(tmp_path / "big", os.O_RDWR | os.O_CREAT, 0o600), 2 * RECYCLE_MIN_BYTES
    )
    maps.keep(big)  # 4 MiB with the other two: the oldest goes, 3 MiB stay
    assert len(maps) == 2 and maps.take(made[1].file_id) is None
    assert maps.take(big.file_id) is big
    big.close()
    maps.clear()


def test_a_forked_child_keeps_none_of_the_parents_mappings(server: CacheServer) -> None:
    cache.put_object("app/ssn", os.urandom(SIZE))
    assert len(WRITER_MAPS) == 1
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if len(WRITER_MAPS) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(WRITER_MAPS) == 1  # the parent's are untouched


@pytest.mark.parametrize("size", [0, 1, 4099, PARALLEL_MIN - 1, PARALLEL_MIN + 4097])
def test_bytes_at_copies_exactly(size: int) -> None:
    source = os.urandom(size)
    buffer = pa.py_buffer(source)
    copied = bytes_at(buffer.address, size)
    assert type(copied) is bytes and copied == source


@pytest.mark.parametrize(
    "value",
    [
        os.urandom(PARALLEL_MIN + 3),  # std pickle: BINBYTES (+ MEMOIZE)
        (os.urandom(PARALLEL_MIN),),  # not a lone bytes: unpickled
        bytearray(os.urandom(PARALLEL_MIN)),
        b"small",
    ],
)
def test_large_pickles_of_one_bytes_are_copied_others_unpickled(value: object) -> None:
    body = pickle.dumps(value, protocol=5)
    decoded = decode_opaque(pa.py_buffer(MAGIC_PICKLE + body))
    assert type(decoded) is type(value) and decoded == value


def test_a_lone_bytes_pickle_with_a_wrong_length_is_unpickled_not_copied() -> None:
    body = bytearray(pickle.dumps(os.urandom(PARALLEL_MIN), protocol=5))
    body[3:7] = (PARALLEL_MIN + 10).to_bytes(4, "little")  # claims more than there is
    with pytest.raises(pickle.UnpicklingError):
        decode_opaque(pa.py_buffer(MAGIC_PICKLE + bytes(body)))


PINNER = """
import os, sys
from flamepy._cache.maps import keep_mappings
from flamepy.core import cache
keep_mappings()
ref = cache.put_object("app/pin", os.urandom(int(sys.argv[1])))
cache.delete_objects(ref.key)  # to the pool, still mapped here
print("pinned", flush=True)
sys.stdin.readline()
"""


def test_a_write_skips_a_file_another_writer_keeps_and_reuses_a_free_one(
    server: CacheServer,
) -> None:
    keep_mappings(0)  # this process keeps nothing, like a user's client
    pinner = subprocess.Popen(
        [sys.executable, "-c", PINNER, str(SIZE)],  # smaller: tried first by size
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert pinner.stdout is not None and pinner.stdout.readline() == "pinned\n"
        mine = cache.put_object("app/ssn", os.urandom(2 * SIZE))  # cannot take that one
        inode = _inode(server)
        cache.delete_objects(mine.key)
        _cache_client.reset_clients()
        assert len(pooled(server)) == 2
        cache.put_object("app/ssn", os.urandom(SIZE))
        assert _inode(server) == inode  # the free one, not the pinned one
        assert len(pooled(server)) == 1
        assert len(WRITER_MAPS) == 0
    finally:
        pinner.communicate("\n", timeout=30)


INSTANCE_LIB = """
import os


def big(n):
    return os.getpid(), os.urandom(n)
"""


def test_an_instance_keeps_the_files_it_writes_results_into(
    flame_env: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from flame_testkit import ClusterThread
    from flamepy import Runner

    assert isinstance(flame_env, ClusterThread)
    local_dir = flame_env.cluster.cache.local_dir if flame_env.cluster.cache else None
    assert local_dir is not None
    lib = user_module(tmp_path, monkeypatch, INSTANCE_LIB, "mapslib")
    try:
        with Runner(f"maps-{uuid.uuid4().hex[:8]}") as rr:
            big = rr.service(lib.big)
            pid, data = big(SIZE).get(120)
            assert len(data) == SIZE
            held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            assert any(link.startswith(str(local_dir)) for link in held), held
    finally:
        sys.modules.pop(lib.__name__, None)
