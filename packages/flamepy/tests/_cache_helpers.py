"""What the same-host cache tests share: pointing flamepy at a server, and
looking into its transfer directory."""

from __future__ import annotations

import gc
import importlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from flame_testkit._cache_local import POOL_DIR
from flame_testkit._cache_server import CacheServer


def use(server: CacheServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAME_CACHE_ENDPOINT", server.endpoint)
    monkeypatch.setenv("FLAME_ENDPOINT", "http://127.0.0.1:1")  # configured: no embedded cluster


def objects(server: CacheServer) -> list[str]:
    """The names of the object files the server holds."""
    gc.collect()
    assert server.local_dir is not None
    return sorted(p.name for p in Path(server.local_dir).glob("*.obj"))


def pooled(server: CacheServer) -> list[Path]:
    """The files in the server's pool of dropped objects."""
    gc.collect()
    assert server.local_dir is not None
    return sorted((Path(server.local_dir) / POOL_DIR).glob("*.free"))


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def user_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, prefix: str
) -> ModuleType:
    """``source`` as a fresh module in ``tmp_path``, which becomes the working
    directory (so a Runner packages it); the caller pops it from sys.modules."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)
