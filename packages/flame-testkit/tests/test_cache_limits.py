"""The object cache's memory bounds, against a real :class:`CacheServer` on 127.0.0.1:0.

The store's memory budget (``max_memory``: what does not fit is spilled, or
refused where it cannot be), the limit for one object (``max_object_bytes``),
the limit on uploads at once (``max_uploads``), and an upload held once in
the server's memory, not two or three times.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from test_cache_server import (
    UNLIMITED,
    UPLOAD,
    _keys,
    get_status,
    native,
    opaque,
    patch,
    put,
    put_status,
    put_table,
    rows,
    upload,
)

from flame_testkit._cache_server import CacheServer

MIB = 1 << 20
CHUNK = 8 * MIB
"""What flamepy sends per batch (``_cache_client.UPLOAD_CHUNK``)."""


def _random(size: int) -> bytes:
    return os.urandom(size)


def _table(nbytes: int) -> pa.Table:
    return native(pa.table({"n": pa.array(range(nbytes // 8), pa.int64())}))


def _spill_files(root: Path) -> dict[str, tuple[int, int]]:
    """Each spilled base file by name, with (inode, mtime): a rewrite changes both."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.rglob("*.arrow")
        if p.is_file()
    }


# ---------------------------------------------------------------- the memory budget


def test_objects_over_the_budget_are_spilled_and_all_stay_readable(tmp_path: Path) -> None:
    budget = 3 * MIB
    with CacheServer(max_memory=budget, spill=tmp_path / "spill") as s:
        c = flight.FlightClient(s.endpoint, generic_options=UNLIMITED)
        values = {f"app/ssn/small{i}": _random(MIB) for i in range(5)}
        values["app/ssn/big"] = _random(5 * MIB)  # alone larger than the budget
        for key, value in values.items():
            put(c, key, value)
            assert s.store.memory_used <= budget
        table = _table(4 * MIB)
        put_table(c, "app/ssn/table", table)
        assert s.store.memory_used <= budget
        assert patch(c, "app/ssn/big", b"delta")["version"] == 2  # patched on disk
        assert s.store.memory_used <= budget
        for key in [*reversed(values), *values]:
            got = rows(c, f"{key}:0")
            patches = [(2, "patch", b"delta")] if key == "app/ssn/big" else []
            assert got == [(1, "base", values[key]), *patches]
            assert s.store.memory_used <= budget
        reply = c.do_get(flight.Ticket(b"app/ssn/table:0")).read_all()
        assert reply.column("n").equals(table.column("n"))
        assert s.store.memory_used <= budget


def test_a_spilled_object_read_back_is_not_written_again(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    with CacheServer(max_memory=3 * MIB, spill=spill) as s:
        c = flight.FlightClient(s.endpoint, generic_options=UNLIMITED)
        big, first = _random(5 * MIB), _random(MIB)
        put(c, "app/ssn/big", big)
        put(c, "app/ssn/first", first)
        for i in range(3):
            put(c, f"app/ssn/other{i}", _random(MIB))  # pushes "first" out
        before = _spill_files(spill)
        assert {"big.arrow", "first.arrow"} <= before.keys()
        for _ in range(2):
            assert rows(c, "app/ssn/big:0") == [(1, "base", big)]
            assert rows(c, "app/ssn/first:0") == [(1, "base", first)]  # back in memory
            for i in range(3):
                rows(c, f"app/ssn/other{i}:0")  # "first" is evicted again
        after = _spill_files(spill)
        assert {name: after[name] for name in before} == before


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)],
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


def test_a_put_that_cannot_spill_is_refused_and_nothing_is_lost(small_tmpfs: Path) -> None:
    budget = 2 * MIB
    with CacheServer(max_memory=budget, spill=small_tmpfs / "spill") as s:
        c = flight.FlightClient(s.endpoint, generic_options=UNLIMITED)
        values = {}
        message = r"resource exhausted: the object .* cannot be spilled .*No space left"
        with pytest.raises(flight.FlightUnavailableError, match=message):  # noqa: PT012
            for i in range(8):  # each put spills the one before: the tmpfs fills
                values[f"app/ssn/v{i}"] = _random(MIB + 1000)
                put(c, f"app/ssn/v{i}", values[f"app/ssn/v{i}"])
        refused = list(values)[-1]
        del values[refused]
        assert len(values) >= 2
        assert s.store.memory_used <= budget
        for key, value in values.items():  # spilled or held: every one is readable
            assert rows(c, f"{key}:0") == [(1, "base", value)]
        assert get_status(s, f"{refused}:0") == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- one object


def test_an_object_above_max_object_bytes_is_refused_naming_the_limit(tmp_path: Path) -> None:
    with CacheServer(max_object_bytes=1000, spill=tmp_path) as s:
        c = flight.FlightClient(s.endpoint)
        limit = r"1000 bytes \(max_object_bytes;"
        with pytest.raises(pa.ArrowInvalid, match=rf"at least 1001 bytes .* one object, {limit}"):
            put(c, "app/ssn/x", b"a" * 600, b"b" * 401)
        desc = flight.FlightDescriptor.for_path("app/ssn/x")
        assert put_status(s, desc, opaque(b"a" * 1001)) == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(pa.ArrowInvalid, match=limit):
            put_table(c, "app/ssn/t", _table(2000))
        assert put(c, "app/ssn/x", b"a" * 1000)["version"] == 1
        with pytest.raises(pa.ArrowInvalid, match=rf"1001 bytes .* {limit}"):
            patch(c, "app/ssn/x", b"!")
        assert _keys(c) == {"app/ssn/x"}
        assert rows(c, "app/ssn/x:0") == [(1, "base", b"a" * 1000)]


def test_an_oversized_upload_is_refused_before_it_is_all_sent() -> None:
    with CacheServer(max_object_bytes=2 * MIB) as s:
        c = flight.FlightClient(s.endpoint)
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("app/ssn/x"), UPLOAD)
        sent = 0

        def send_64_mib() -> None:
            nonlocal sent
            try:
                for _ in range(64):
                    writer.write_batch(opaque(b"x" * MIB))
                    sent += 1
                writer.done_writing()
                reader.read()
            finally:
                writer.close()

        with pytest.raises(pa.ArrowInvalid, match="max_object_bytes"):
            send_64_mib()
        assert sent < 32  # the server stopped reading at the third MiB


# ---------------------------------------------------------------- uploads at once


def _hold_upload(client: flight.FlightClient, key: str) -> flight.FlightStreamWriter:
    """A DoPut that has started (its first batch sent) and is not finished."""
    writer, _ = client.do_put(flight.FlightDescriptor.for_path(key), UPLOAD)
    writer.write_batch(opaque(b"held"))
    return writer


def _finish(writer: flight.FlightStreamWriter) -> None:
    writer.done_writing()
    writer.close()


def _eventually(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_uploads_beyond_the_limit_wait_for_a_slot_then_fail() -> None:
    with CacheServer(max_uploads=2, upload_wait=0.5) as s:
        c = flight.FlightClient(s.endpoint)
        held = [_hold_upload(c, f"app/ssn/held{i}") for i in range(2)]
        _eventually(lambda: s.flight_server.uploads_in_progress == 2)
        started = time.monotonic()
        message = r"resource exhausted: 2 uploads are in progress.*\(max_uploads;.*within 0.5 s"
        with pytest.raises(flight.FlightUnavailableError, match=message):
            put(c, "app/ssn/third", b"3")
        assert 0.4 < time.monotonic() - started < 10
        desc = flight.FlightDescriptor.for_path("app/ssn/third")
        assert put_status(s, desc, opaque(b"3")) == grpc.StatusCode.UNAVAILABLE
        _finish(held[0])
        assert put(c, "app/ssn/third", b"3")["version"] == 1
        _finish(held[1])
        assert _keys(c) == {"app/ssn/held0", "app/ssn/held1", "app/ssn/third"}


def test_a_waiting_upload_goes_on_when_a_slot_frees() -> None:
    with CacheServer(max_uploads=1, upload_wait=30) as s:
        c = flight.FlightClient(s.endpoint)
        held = _hold_upload(c, "app/ssn/held")
        _eventually(lambda: s.flight_server.uploads_in_progress == 1)
        result: list[object] = []
        waiting = threading.Thread(target=lambda: result.append(put(c, "app/ssn/next", b"n")))
        waiting.start()
        time.sleep(0.3)
        assert result == [] and waiting.is_alive()  # it waits ...
        _finish(held)
        waiting.join(10)
        assert [r["version"] for r in result] == [1]  # type: ignore[index]


def test_stopping_fails_the_uploads_waiting_for_a_slot_at_once() -> None:
    with CacheServer(max_uploads=1, upload_wait=60) as s:
        c = flight.FlightClient(s.endpoint)
        held = _hold_upload(c, "app/ssn/held")
        _eventually(lambda: s.flight_server.uploads_in_progress == 1)
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                put(c, "app/ssn/next", b"n")
            except BaseException as exc:
                errors.append(exc)

        waiting = threading.Thread(target=wait)
        waiting.start()
        time.sleep(0.2)
        started = time.monotonic()
        s.flight_server.refuse_uploads()
        waiting.join(10)
        assert time.monotonic() - started < 5
        assert len(errors) == 1 and isinstance(errors[0], flight.FlightUnavailableError)
        assert "shutting down" in str(errors[0])
        _finish(held)


# ---------------------------------------------------------------- eviction "none"


def test_with_eviction_none_what_would_exceed_the_budget_is_refused() -> None:
    with CacheServer(max_memory=3000, eviction="none") as s:
        c = flight.FlightClient(s.endpoint)
        put(c, "app/ssn/a", b"a" * 1000)
        put(c, "app/ssn/b", b"b" * 1000)
        message = r"resource exhausted: the cache holds 2000 bytes .* 3000 bytes \(max_memory;"
        with pytest.raises(flight.FlightUnavailableError, match=message):
            put(c, "app/ssn/c", b"c" * 1500)
        with pytest.raises(flight.FlightUnavailableError, match="resource exhausted"):
            patch(c, "app/ssn/a", b"!" * 1001)
        assert s.store.memory_used == 2000
        list(c.do_action(flight.Action("DELETE", b"app/ssn/b")))
        assert put(c, "app/ssn/c", b"c" * 1500)["version"] == 1
        assert _keys(c) == {"app/ssn/a", "app/ssn/c"}


# ---------------------------------------------------------------- held once

_RSS_SERVER = textwrap.dedent(
    """
    import sys
    from flame_testkit._cache_server import CacheServer

    def status():
        found = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0]) * 1024
        return found

    with CacheServer(max_memory=1 << 30, compression=None) as server:
        print(server.port, flush=True)
        for line in sys.stdin:
            if line.strip() == "reset":  # the peak (VmHWM) restarts from the RSS now
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            found = status()
            print(found["VmRSS"], found["VmHWM"], flush=True)
    """
)


@pytest.fixture
def rss_server() -> Iterator[tuple[flight.FlightClient, subprocess.Popen[str]]]:
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak RSS")
    # Freed receive buffers may stay in glibc's arenas (its mmap threshold grows
    # with use) or in Arrow's mimalloc pool, at random: a 256 MiB upload peaked at
    # 1.1x to 1.7x run to run.  Plain malloc with a fixed threshold hands them back
    # at once, so what is measured is what the server holds.
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(MIB),
        "ARROW_DEFAULT_MEMORY_POOL": "system",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _RSS_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        client = flight.FlightClient(f"grpc://127.0.0.1:{port}", generic_options=UNLIMITED)
        yield client, proc
        client.close()
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _memory(proc: subprocess.Popen[str], command: str) -> tuple[int, int]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    rss, peak = proc.stdout.readline().split()
    return int(rss), int(peak)


def _chunked_put(client: flight.FlightClient, key: str, payload: pa.Buffer) -> None:
    """An upload as flamepy makes it: one row per 8 MiB chunk."""
    batches = []
    for offset in range(0, payload.size, CHUNK):
        piece = payload.slice(offset, min(CHUNK, payload.size - offset))
        offsets = pa.py_buffer(b"\0\0\0\0" + piece.size.to_bytes(4, "little"))
        data = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, piece])
        batches.append(pa.record_batch([pa.array([0], pa.uint64()), data], UPLOAD))
    upload(client, flight.FlightDescriptor.for_path(key), *batches)


def test_a_large_upload_is_held_once_in_the_servers_memory(
    rss_server: tuple[flight.FlightClient, subprocess.Popen[str]],
) -> None:
    client, proc = rss_server
    size = 512 * MIB
    payload = pa.py_buffer(_random(MIB) * (size // MIB))
    # A first large upload warms the C allocators up (glibc keeps some freed
    # receive buffers in its arenas, once): what is measured is the steady state.
    _chunked_put(client, "app/ssn/warm", payload)
    list(client.do_action(flight.Action("DELETE", b"app/ssn/warm")))
    base, _ = _memory(proc, "reset")
    _chunked_put(client, "app/ssn/big", payload)
    _, peak = _memory(proc, "rss")
    growth = peak - base
    # Gathered in place: the payload plus what gRPC has read ahead (tens of MiB),
    # 1.03-1.23x here, once 1.52x on a loaded CI machine; it was 2.0-2.1x, the chunks
    # and their joined copy, before.
    assert growth < 1.8 * size, f"peak RSS grew by {growth / size:.2f}x the upload"
    reply = client.do_get(flight.Ticket(b"app/ssn/big:0")).read_all()
    assert reply.column("data")[0].as_buffer().equals(payload)
