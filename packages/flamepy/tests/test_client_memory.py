"""The client's memory policy, opt-in (``FLAME_HEAP_KEEP``): from its first large
value on, freed memory is kept, so the next large ``bytes`` lands in pages the
process already has; and the copy into a new value asks for huge pages.  Unasked,
the allocator stays the user's."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from flamepy._cache.copying import PARALLEL_MIN, advise_huge_pages
from flamepy._cache.memory import DEFAULT_HEAP_KEEP, heap_keep_from_env

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

# Decodes a 100 MB cached ``bytes`` value (FLM\0 + its pickle) three times, the
# way a get does, dropping each; prints the page faults of each decode, then
# whether the policy was applied.  argv[1] == "small" decodes small values only.
PROBE = """
import pickle, resource, sys
import pyarrow as pa
from flamepy._cache import memory as _memory
from flamepy._cache.codec import MAGIC_PICKLE, decode_opaque
size = 1000 if sys.argv[1] == "small" else 100_000_000
cell = pa.py_buffer(MAGIC_PICKLE + pickle.dumps(b"x" * size, protocol=5))
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    value = decode_opaque(cell)
    assert type(value) is bytes and len(value) == size
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del value
print(_memory._applied)
"""
PAGES = 100_000_000 // 4096


def _probe(env: dict[str, str], *args: str) -> tuple[list[int], str, str]:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout.split()
    return [int(n) for n in out[:3]], out[3], run.stderr


@glibc
def test_after_the_first_large_value_the_next_ones_reuse_its_pages() -> None:
    faults, applied, _ = _probe({"FLAME_HEAP_KEEP": str(1 << 30)}, "large")
    assert applied == "True"
    assert faults[1] < PAGES // 20 and faults[2] < PAGES // 20


@glibc
def test_case9_unasked_the_allocator_stays_the_users() -> None:
    """Case 9 of the Runner correctness issue: no FLAME_HEAP_KEEP, no mallopt."""
    env = {k: v for k, v in os.environ.items() if k != "FLAME_HEAP_KEEP"}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, "large"], capture_output=True, text=True, timeout=120, env=env
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout.split()
    assert out[3] == "False"  # chosen: glibc's defaults
    assert min(int(n) for n in out[:3]) > PAGES // 1000  # every large value is new memory


@glibc
def test_zero_keeps_glibcs_defaults_and_every_large_value_is_new_memory() -> None:
    faults, applied, _ = _probe({"FLAME_HEAP_KEEP": "0"}, "large")
    assert applied == "False"
    # Huge pages (where the kernel has them) take fewer faults than 4 KiB pages,
    # but a new mapping each time still faults every time.
    assert min(faults) > PAGES // 1000


@glibc
def test_a_bad_bound_is_logged_and_the_defaults_are_kept() -> None:
    faults, applied, _ = _probe({"FLAME_HEAP_KEEP": "lots"}, "large")
    assert applied == "False" and min(faults) > PAGES // 1000


def test_a_process_that_decodes_only_small_values_is_left_alone() -> None:
    _, applied, _ = _probe({}, "small")
    assert applied == "None"


def test_the_bound_is_parsed_with_a_clear_error() -> None:
    name = "FLAME_HEAP_KEEP"
    assert heap_keep_from_env(name, None) == heap_keep_from_env(name, " ") == DEFAULT_HEAP_KEEP
    assert heap_keep_from_env(name, "0") == 0 and heap_keep_from_env(name, "4096") == 4096
    with pytest.raises(ValueError, match=r"FLAME_HEAP_KEEP is 'lots': give a number of bytes"):
        heap_keep_from_env(name, "lots")
    with pytest.raises(ValueError, match="cannot be negative"):
        heap_keep_from_env(name, "-1")


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "none"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "none"


@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"), reason="no transparent huge pages")
def test_a_large_copy_asks_for_huge_pages() -> None:
    import pyarrow as pa

    region = pa.allocate_buffer(4 * PARALLEL_MIN)
    assert advise_huge_pages(region.address + 1, region.size - 1)  # its inner whole pages
    assert not advise_huge_pages(region.address + 1, 100)  # no whole page inside
