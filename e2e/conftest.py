"""The end-to-end suite's cluster: whatever ``FLAME_TEST_ENDPOINT`` (or
``FLAME_ENDPOINT``) names, or else a fresh ``flame-local up`` in its own process.

The tests reach the cluster over gRPC and Flight only, through flame-testkit's
pytest fixtures (``flame_env``), exactly as a downstream project's tests would: no
in-process shortcut, since the cluster is never in this process.  Against a real
cluster, also set ``FLAME_TEST_CACHE_ENDPOINT`` (or ``FLAME_CACHE_ENDPOINT``) and,
where it needs them, ``FLAME_CA_FILE`` / ``FLAME_TOKEN_FILE``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

UP_TIMEOUT = 60.0


def _flame_local_up(work: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flame_testkit._cli", "up", "--work-dir", str(work)),
            "--no-local-transfer",  # over Flight only, as with a real cluster
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
    )
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    while "FLAME_CACHE_ENDPOINT" not in printed:
        line = proc.stdout.readline().strip()
        if not line:
            proc.kill()
            raise RuntimeError(f"flame-local up failed: {proc.communicate()[1]}")
        key, _, value = line.partition("=")
        printed[key] = value
    return proc, printed


@pytest.fixture(scope="session", autouse=True)
def e2e_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Point flame-testkit's fixtures at the cluster under test (FLAME_TEST_*)."""
    saved = {k: os.environ.get(k) for k in ("FLAME_TEST_ENDPOINT", "FLAME_TEST_CACHE_ENDPOINT")}
    proc = None
    if not os.environ.get("FLAME_TEST_ENDPOINT"):
        if os.environ.get("FLAME_ENDPOINT"):
            os.environ["FLAME_TEST_ENDPOINT"] = os.environ["FLAME_ENDPOINT"]
            if os.environ.get("FLAME_CACHE_ENDPOINT"):
                os.environ["FLAME_TEST_CACHE_ENDPOINT"] = os.environ["FLAME_CACHE_ENDPOINT"]
        else:
            proc, printed = _flame_local_up(tmp_path_factory.mktemp("flame-local"))
            os.environ["FLAME_TEST_ENDPOINT"] = printed["FLAME_ENDPOINT"]
            os.environ["FLAME_TEST_CACHE_ENDPOINT"] = printed["FLAME_CACHE_ENDPOINT"]
    try:
        yield os.environ["FLAME_TEST_ENDPOINT"]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.returncode == 0, proc.communicate()[1]
