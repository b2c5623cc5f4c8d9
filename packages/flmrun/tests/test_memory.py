"""The instance's memory policy: freed memory is kept, so big buffers are reused warm."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from _instances import TESTAPP, Instance

from flmrun._memory import DEFAULT_HEAP_KEEP, heap_keep_from_env

# A thread (tasks run on the task stream's thread) allocates and frees 100 MB
# three times; it prints the page faults each allocation took.
PROBE = """
import resource, sys, threading
from flmrun._memory import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
def job():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = bytearray(100_000_000)
        block[::4096] = bytes(len(range(0, 100_000_000, 4096)))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del block
thread = threading.Thread(target=job)
thread.start()
thread.join()
print(applied)
"""


def _probe(keep: int) -> tuple[list[int], str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(keep)], capture_output=True, text=True, timeout=60
    ).stdout.split()
    return [int(n) for n in out[:3]], out[3]


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_freed_memory_is_reused_without_new_page_faults() -> None:
    faults, applied = _probe(DEFAULT_HEAP_KEEP)
    assert applied == "True"
    pages = 100_000_000 // 4096
    assert faults[0] > pages // 2  # the first time, the pages are new
    assert faults[1] < pages // 20 and faults[2] < pages // 20  # then reused
    faults, applied = _probe(0)  # 0: glibc's defaults, every block is new
    assert applied == "False" and faults[1] > pages // 2


def test_the_bound_comes_from_the_environment() -> None:
    assert heap_keep_from_env(None) == heap_keep_from_env("") == DEFAULT_HEAP_KEEP
    assert heap_keep_from_env("0") == 0
    assert heap_keep_from_env("123456") == 123456
    with pytest.raises(ValueError, match=r"FLMRUN_HEAP_KEEP is 'lots': give a number of bytes"):
        heap_keep_from_env("lots")
    with pytest.raises(ValueError, match="cannot be negative"):
        heap_keep_from_env("-1")


def test_a_bad_bound_stops_the_instance_with_a_clear_error(
    spawn: Callable[..., Instance], base_env: dict[str, str], workdir: Path
) -> None:
    inst = spawn("-m", "flmrun", env={**base_env, "FLMRUN_HEAP_KEEP": "lots"})
    assert inst.wait_exit() == 2
    assert "FLMRUN_HEAP_KEEP is 'lots'" in inst.stderr()
    inst = spawn(*TESTAPP, env={**base_env, "FLMRUN_HEAP_KEEP": "-5"})
    assert inst.wait_exit() == 2
    assert "cannot be negative" in inst.stderr()


# The instance applies its policy at start; a large value decoded later (a bytes
# argument fetched from the cache) must not make flamepy apply FLAME_HEAP_KEEP over it.
AFTER_START = """
import pickle, resource
import pyarrow as pa
from flmrun._memory import apply_from_env
applied = apply_from_env()
from flamepy._cache.codec import MAGIC_PICKLE, decode_opaque
cell = pa.py_buffer(MAGIC_PICKLE + pickle.dumps(b"x" * 100_000_000, protocol=5))
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    value = decode_opaque(cell)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del value
print(applied)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
@pytest.mark.parametrize(("instance", "client", "kept"), [("0", "", False), ("", "0", True)])
def test_the_instance_policy_wins_over_flamepys_client_policy(
    instance: str, client: str, kept: bool
) -> None:
    env = {**os.environ, "FLMRUN_HEAP_KEEP": instance, "FLAME_HEAP_KEEP": client}
    run = subprocess.run(
        [sys.executable, "-c", AFTER_START], capture_output=True, text=True, timeout=120, env=env
    )
    assert run.returncode == 0, run.stderr
    *faults, applied = run.stdout.split()
    assert applied == str(kept)
    pages = 100_000_000 // 4096
    if kept:
        assert int(faults[1]) < pages // 20 and int(faults[2]) < pages // 20
    else:  # each value is new memory (fewer faults where huge pages are used)
        assert min(int(n) for n in faults) > pages // 1000
