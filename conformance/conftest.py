"""Conformance with Flame's own Python SDK, ``flamepy==0.6.0`` from PyPI (the *peer*).

These tests run in the workspace venv.  The peer lives in its own venv, named by
``FLAME_PEER_PYTHON`` (``uv run nox -s conformance`` builds it), and is only ever
used as a separate process: a scenario script from ``peer/`` runs under the peer
python, drives the peer SDK against a local cluster of ours, and prints one JSON
document with what it saw; the test asserts on it and cross-checks from our side.
``ours/`` holds scripts that the workspace python runs the same way (for Runner
code that must run as ``__main__`` in its own project directory).

Fixtures: ``peer_python``, ``cluster_config`` (module scope; override it in a
module for other cluster settings), ``cluster`` (module scope), ``run_peer`` and
``run_ours`` (run a scenario, return its JSON) and ``ours`` (our client in this
process, configured for ``cluster``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy import _client
from flamepy._cache import client as _cache_client

PEER_ENV = "FLAME_PEER_PYTHON"
PEER_VERSION = "0.6.0"
CONFORMANCE_DIR = Path(__file__).resolve().parent
REPO_ROOT = CONFORMANCE_DIR.parent
PEER_DIR = CONFORMANCE_DIR / "peer"
OURS_DIR = CONFORMANCE_DIR / "ours"
SCENARIO_TIMEOUT = 150.0
"""Seconds one scenario process may take (Runner scenarios start several instances)."""
SCRUBBED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
"""Variables that could make a scenario python import something other than its own venv."""
OUTPUT_TAIL = 4000

_PROBE = (
    "import importlib.metadata, json, flamepy, flamepy.runner.runpy; "
    "print(json.dumps({'version': importlib.metadata.version('flamepy'), "
    "'file': flamepy.__file__}))"
)


def unique(prefix: str) -> str:
    """A fresh name for an application or session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def scenario_env(home: Path, endpoint: str | None, cache_endpoint: str | None) -> dict[str, str]:
    """This process's environment without Flame or Python path settings, plus ``HOME``
    and (when given) ``FLAME_ENDPOINT`` / ``FLAME_CACHE_ENDPOINT``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_") and k not in SCRUBBED}
    env["HOME"] = str(home)
    if endpoint is not None:
        env["FLAME_ENDPOINT"] = endpoint
    if cache_endpoint is not None:
        env["FLAME_CACHE_ENDPOINT"] = cache_endpoint
    return env


def _tail(text: str) -> str:
    return text if len(text) <= OUTPUT_TAIL else "..." + text[-OUTPUT_TAIL:]


def check_peer_identity(identity: Mapping[str, str]) -> None:
    """Fail unless a scenario really imported the published flamepy 0.6.0: that
    version, installed in a site-packages, not our sources (ours is 0.1.0)."""
    assert identity["version"] == PEER_VERSION, identity
    path = Path(identity["file"]).resolve()
    assert "site-packages" in path.parts, f"the peer's flamepy is not installed: {path}"
    assert not path.is_relative_to(REPO_ROOT / "packages"), (
        f"the peer python imported the workspace's flamepy: {path}"
    )


@pytest.fixture(scope="session")
def peer_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The python of the peer venv (``FLAME_PEER_PYTHON``); skips when it is not set."""
    value = os.environ.get(PEER_ENV)
    if not value:
        pytest.skip(
            f"{PEER_ENV} is not set: run `uv run nox -s conformance`, which builds a venv "
            f"with flamepy=={PEER_VERSION} from PyPI and sets it"
        )
    if not os.access(value, os.X_OK):
        pytest.fail(f"{PEER_ENV}={value} is not an executable python")
    probe = subprocess.run(
        [value, "-c", _PROBE],
        env=scenario_env(tmp_path_factory.mktemp("probe-home"), None, None),
        cwd=PEER_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.fail(f"{PEER_ENV}={value} cannot import flamepy:\n{_tail(probe.stderr)}")
    check_peer_identity(json.loads(probe.stdout.strip().splitlines()[-1]))
    return value


PEER_HOST = "127.0.0.1"
"""Flame's own SDK speaks neither Unix sockets nor tokens: the conformance clusters
are served on loopback TCP without authentication (``host=PEER_HOST, no_auth=True``),
the explicit ``flame-local up --host 127.0.0.1 --no-auth`` mode."""


@pytest.fixture(scope="module")
def cluster_config() -> LocalClusterConfig:
    """The local cluster's settings; a module may override this fixture."""
    return LocalClusterConfig(delay_release=2, host=PEER_HOST, no_auth=True, test_app=True)


@contextlib.contextmanager
def isolated_cluster(config: LocalClusterConfig, home: Path) -> Iterator[ClusterThread]:
    """A started local cluster (session manager, executor manager and object cache).

    While it runs, this process has no ``FLAME_*`` variables and ``HOME`` is ``home``:
    the instances it launches inherit that, so no developer flame.yaml leaks in.
    """
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("FLAME_")]:
            mp.delenv(name)
        mp.setenv("HOME", str(home))
        thread = ClusterThread(config).start()
        try:
            yield thread
        finally:
            thread.stop()
    assert thread.leftover_processes() == [], "instance processes outlived the cluster"


@pytest.fixture(scope="module")
def cluster(
    cluster_config: LocalClusterConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterThread]:
    """The module's local cluster, built from ``cluster_config``."""
    with isolated_cluster(cluster_config, tmp_path_factory.mktemp("cluster-home")) as thread:
        yield thread


@dataclass
class ScenarioRunner:
    """Runs one scenario script as its own process and returns its JSON result."""

    python: str
    scripts: Path
    home: Path
    endpoint: str | None
    cache_endpoint: str | None
    is_peer: bool
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list, repr=False)

    def __call__(
        self,
        script: str,
        *args: str,
        data: Mapping[str, Any] | None = None,
        project: Path | None = None,
        configured: bool = True,
        home: Path | None = None,
        timeout: float = SCENARIO_TIMEOUT,
    ) -> dict[str, Any]:
        """Run ``script`` (a file name in ``scripts``) with ``data`` as JSON on stdin.

        With ``project``, the script is copied into that directory and run there
        (Runner scenarios package their working directory).  ``configured=False``
        leaves FLAME_ENDPOINT / FLAME_CACHE_ENDPOINT unset; ``home`` replaces HOME.
        """
        path = self.scripts / script
        cwd = self.scripts
        if project is not None:
            project.mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copy(path, project / script))
            cwd = project
        env = scenario_env(
            home or self.home,
            self.endpoint if configured else None,
            self.cache_endpoint if configured else None,
        )
        proc = subprocess.run(
            [self.python, str(path), *args],
            input=json.dumps(data or {}),
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.runs.append(proc)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            pytest.fail(
                f"scenario {script} exited with {proc.returncode}\n"
                f"--- stdout\n{_tail(proc.stdout)}\n--- stderr\n{_tail(proc.stderr)}"
            )
        result: dict[str, Any] = json.loads(lines[-1])
        if self.is_peer:
            check_peer_identity(result["peer"])
        return result


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return home


@pytest.fixture
def run_peer(peer_python: str, cluster: ClusterThread, tmp_path: Path) -> ScenarioRunner:
    """Run a ``peer/`` scenario under the peer python against ``cluster``."""
    return ScenarioRunner(
        peer_python, PEER_DIR, _home(tmp_path), cluster.endpoint, cluster.cache_endpoint, True
    )


@pytest.fixture
def run_ours(cluster: ClusterThread, tmp_path: Path) -> ScenarioRunner:
    """Run an ``ours/`` script under the workspace python against ``cluster``."""
    return ScenarioRunner(
        sys.executable, OURS_DIR, _home(tmp_path), cluster.endpoint, cluster.cache_endpoint, False
    )


@pytest.fixture
def ours(
    cluster: ClusterThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[ClusterThread]:
    """Our client in this process, configured for ``cluster`` through the environment."""
    monkeypatch.setenv("HOME", str(_home(tmp_path)))
    monkeypatch.setenv("FLAME_ENDPOINT", cluster.endpoint)
    assert cluster.cache_endpoint is not None
    monkeypatch.setenv("FLAME_CACHE_ENDPOINT", cluster.cache_endpoint)
    _client.reset_default_connection()
    try:
        yield cluster
    finally:
        _client.reset_default_connection()
        _cache_client.reset_clients()
