"""Fixtures of the chaos suite (helpers in ``_chaos.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _chaos import KEEPALIVE, LocalUp, start, stop


@pytest.fixture
def local_up(tmp_path: Path) -> Iterator[LocalUp]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env.update(
        FLAME_KEEPALIVE=KEEPALIVE,
        FLAME_LOCAL_TRANSFER_DIR=str(tmp_path / "shm"),
        TMPDIR=str(tmp_path / "tmp"),
        HOME=str(tmp_path),
    )
    (tmp_path / "tmp").mkdir()
    (tmp_path / "shm").mkdir()
    up = start(tmp_path / "work", env)
    try:
        yield up
    finally:
        for client in up.extra:
            stop(client)
            for stream in (client.stdout, client.stderr):
                if stream is not None:
                    stream.close()
        stop(up.proc)
        for stream in (up.proc.stdout, up.proc.stderr):
            if stream is not None:
                stream.close()
