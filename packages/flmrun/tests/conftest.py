"""Fixtures of flmrun's tests: a short work directory, an environment, instances."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _instances import SERVICES_MODULE, SLOW_MODULE, Instance


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path under /tmp: a Unix socket path must fit in ~107 bytes.
    path = Path(tempfile.mkdtemp(prefix="flm", dir="/tmp"))
    (path / "flmtestsvc.py").write_text(textwrap.dedent(SERVICES_MODULE))
    (path / "flmtestslow.py").write_text(textwrap.dedent(SLOW_MODULE))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def base_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["FLAME_INSTANCE_ENDPOINT"] = str(workdir / "x.sock")
    env["FLAME_LOG"] = "info"
    env["PYTHONPATH"] = str(workdir)
    env["FLMRUN_TEST_EVENTS"] = str(workdir / "events")
    return env


@pytest.fixture
def spawn(workdir: Path, base_env: dict[str, str]) -> Iterator[Callable[..., Instance]]:
    started: list[Instance] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Instance:
        inst = Instance(list(args), workdir, base_env if env is None else env)
        started.append(inst)
        return inst

    try:
        yield start
    finally:
        for inst in started:
            inst.kill()
