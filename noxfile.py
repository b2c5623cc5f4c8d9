"""Project sessions.  ``uv run nox`` runs the default set (what CI runs).

* ``lint``: ruff check, ruff format --check, mypy (strict).
* ``tests``: every package's tests; ``tests-flamepy``, ``tests-flmrun`` and
  ``tests-testkit`` run one package each.
* ``conformance``: wire conformance with Flame's own SDK (flamepy 0.6.0 from PyPI, in
  an isolated venv beside the session's), ``conformance/``.
* ``e2e``: the end-to-end suite (``e2e/``) against the cluster ``FLAME_ENDPOINT`` (or
  ``FLAME_TEST_ENDPOINT``) names, or else a fresh ``flame-local up`` in its own process.
* ``chaos``: the chaos suite (``chaos/``: stopped clusters and instances, session
  bursts, a randomized run of faults) and the fault tests of the package suites,
  at a quick size; ``CHAOS_SCALE=full`` for the full one.
* ``protos``: regenerate flamepy's committed gRPC stubs.
* ``bench`` / ``bench-quick``: the Runner vs Ray vs Dask suite (``bench/run.py``);
  not in the default set.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "tests", "conformance", "e2e", "chaos"]

PYTHON = "3.11"
PEER_FLAMEPY = "flamepy==0.6.0"
"""The reference peer of the conformance tests: Flame's own published Python SDK."""
PACKAGES = {
    "flamepy": "packages/flamepy/tests",
    "flmrun": "packages/flmrun/tests",
    "testkit": "packages/flame-testkit/tests",
}


def sync(session: nox.Session) -> None:
    """Install the locked workspace (all packages, dev group) into the session venv."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--all-packages",
        "--group",
        "dev",
        f"--python={session.virtualenv.location}",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location, "UV_PYTHON_DOWNLOADS": "never"},
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    sync(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "packages/flamepy/src", "packages/flmrun/src", "packages/flame-testkit/src")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    sync(session)
    session.run("pytest", *PACKAGES.values(), *session.posargs)


def _package_session(name: str, path: str) -> None:
    @nox.session(python=PYTHON, name=f"tests-{name}")
    def _tests(session: nox.Session) -> None:
        sync(session)
        session.run("pytest", path, *session.posargs)


for _name, _path in PACKAGES.items():
    _package_session(_name, _path)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """Our SDK, runner and testkit against Flame's own SDK, both ways (conformance/).

    The peer gets its own venv (``<session venv>/../conformance-peer``), never the
    workspace's: the tests run its python as separate processes (FLAME_PEER_PYTHON).
    """
    sync(session)
    peer = Path(session.virtualenv.location).parent / "conformance-peer"
    peer_python = peer / "bin" / "python"
    env = {"UV_PYTHON_DOWNLOADS": "never"}
    session.run_install("uv", "venv", "--clear", "--quiet", "-p", "python3.11", str(peer), env=env)
    session.run_install(
        "uv", "pip", "install", "--python", str(peer_python), PEER_FLAMEPY, "numpy", env=env
    )
    env = {"FLAME_PEER_PYTHON": str(peer_python)}
    session.run("pytest", "conformance/", "-p", "no:cacheprovider", *session.posargs, env=env)
    # Group 5, flamepy.service both ways with the peer: in flamepy's suite (where
    # they skip without a peer), run here with it; a run of its own, since the two
    # directories each have a conftest module.
    session.run(
        "pytest",
        "packages/flamepy/tests/test_service.py::test_peer_session_drives_our_instance",
        "packages/flamepy/tests/test_service.py::test_our_session_drives_peer_instance",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env=env,
    )


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """Any cluster: ``FLAME_ENDPOINT=https://flame:8080 FLAME_CACHE_ENDPOINT=grpcs://... uv run
    nox -s e2e``; with nothing set, a ``flame-local up`` of its own (over gRPC and Flight)."""
    sync(session)
    session.run("pytest", "e2e/", "-p", "no:cacheprovider", *session.posargs)


CHAOS_ALSO = (
    # Each fault of the reliability issue that the package suites already cover.
    "packages/flame-testkit/tests/test_semantics.py::"
    "test_an_unexpected_bind_error_counts_toward_the_retry_limit",  # case 1
    "packages/flmrun/tests/test_fetch.py",  # case 3, and 9 (truncated download, URL)
    "packages/flamepy/tests/test_cache_transfer_space.py",  # case 2
    "packages/flamepy/tests/test_reaping.py",  # case 5
    "packages/flame-testkit/tests/test_cache_limits.py",  # case 7
    "packages/flame-testkit/tests/test_testkit_api.py::"
    "test_a_new_cluster_sweeps_what_dead_clusters_left",  # case 8
    "packages/flame-testkit/tests/test_leftovers.py",  # case 8
    "packages/flmrun/tests/test_archive.py::test_control_character_in_name",  # case 9
    "packages/flamepy/tests/test_cache.py::test_colon_in_a_key_is_refused_at_put_time",
    "packages/flame-testkit/tests/test_frontend_wire.py::"
    "test_unparsable_request_is_invalid_argument",  # case 9
)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """Faults: ``CHAOS_SCALE=full uv run nox -s chaos`` for the full sizes."""
    sync(session)
    session.run("pytest", "chaos/", *CHAOS_ALSO, "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHON)
def protos(session: nox.Session) -> None:
    sync(session)
    session.run("python", "packages/flamepy/scripts/gen_protos.py")


def _bench(session: nox.Session, *args: str) -> None:
    sync(session)
    session.install("ray", "distributed")
    session.run("python", "bench/run.py", *args, *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Runner vs Ray vs Dask, full sizes and 5 repeats (long: take it on an idle machine)."""
    _bench(session)


@nox.session(python=PYTHON, name="bench-quick")
def bench_quick(session: nox.Session) -> None:
    """The same suite at small sizes, once: checks that every metric gives a number."""
    _bench(session, "--quick")


if os.environ.get("CI"):
    nox.options.reuse_existing_virtualenvs = False
