"""The documentation's example programs run, and print what their comments say.

Every complete Python block (one that starts with an import) of the front page,
getting started and the user guide is run as a program against the test cluster;
a ``print(...)  # value`` comment whose value is a literal (a number, a list, ...)
must appear in what it printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flame_testkit import ClusterThread

DOCS = Path(__file__).resolve().parents[3] / "docs"
PAGES = [
    "index.md",
    "getting-started.md",
    *sorted(f"guide/{p.name}" for p in (DOCS / "guide").glob("*.md")),
]
NOT_RUN = {
    ("guide/configuration.md", 1): "talks to an application 'my-app' of a real cluster",
}
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
PRINTED = re.compile(r"print\(.*\)\s+#\s+(.*)$")


def _programs() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        for index, block in enumerate(BLOCK.findall((DOCS / page).read_text())):
            if block.startswith(("from ", "import ")) and (page, index) not in NOT_RUN:
                found.append((page, index, block))
    return found


def _expected(block: str) -> list[str]:
    values = []
    for line in block.splitlines():
        m = PRINTED.search(line)
        if m is None or m.group(1)[:1] not in "0123456789[{('\"":
            continue
        value = re.split(r" \.\.\.|: | \(|  ", m.group(1))[0].strip()
        values.append(value)
    return values


def test_the_pages_have_examples_to_run() -> None:
    assert len(_programs()) >= 8


@pytest.mark.parametrize(("page", "index", "block"), _programs(), ids=lambda v: str(v)[:24])
def test_a_docs_example_runs_as_written(
    page: str, index: int, block: str, tmp_path: Path, flame_env: ClusterThread
) -> None:
    (tmp_path / "main.py").write_text(block)
    env = {k: v for k, v in os.environ.items() if k != "FLAME_OUTPUT"}
    proc = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, f"{page} block {index}:\n{proc.stderr[-3000:]}"
    for value in _expected(block):
        assert value in proc.stdout, f"{page} block {index}: {value!r} not printed"
