"""Project sessions.  ``uv run nox`` runs the default set (what CI runs).

* ``lint``: ruff check, ruff format --check, mypy (strict).
* ``docs``: the documentation site (``mkdocs.yml``, ``docs/``), built with
  ``mkdocs build --strict`` into the session's directory (``.nox/docs/site``).
* ``tests``: every package's tests; ``tests-flamepy``, ``tests-flmrun`` and
  ``tests-testkit`` run one package each.
* ``tests-matrix``: a quick subset on the other Pythons (``tests-matrix-3.10``,
  ``-3.12``, ``-3.13``); the full suite runs on 3.11.
* ``install``: the wheels and the package folders installed outside the workspace,
  and a Runner example run there (docs/install.md).
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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    "lint",
    "docs",
    "tests",
    "tests-matrix",
    "install",
    "conformance",
    "e2e",
    "chaos",
]

PYTHON = "3.11"
MATRIX = ["3.10", "3.12", "3.13"]
"""The other Pythons of ``requires-python``: ``tests-matrix`` runs a quick subset there."""
MATRIX_TESTS = [
    "packages/flamepy/tests/test_config.py",
    "packages/flamepy/tests/test_public_api.py",
    "packages/flamepy/tests/test_cache.py",
    "packages/flamepy/tests/test_install_hints.py",
    "packages/flamepy/tests/test_examples.py::test_runner_examples_print_what_they_say",
]
PEER_FLAMEPY = "flamepy==0.6.0"
"""The reference peer of the conformance tests: Flame's own published Python SDK."""
PACKAGES = {
    "flamepy": "packages/flamepy/tests",
    "flmrun": "packages/flmrun/tests",
    "testkit": "packages/flame-testkit/tests",
}


def _runs(python: str | Path | None) -> bool:
    try:
        return (
            python is not None
            and subprocess.run(
                [str(python), "-c", ""], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _make_findable(versions: list[str]) -> None:
    """Let nox find ``python3.X`` for each of ``versions`` without downloading one.

    nox looks on PATH; pyenv's shims answer only for the active versions (``pyenv
    global``, ``.python-version``), so another installed version is not found.  Its
    ``bin`` directory goes at the end of PATH: what PATH found before, it finds first.
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for version in versions:
        if _runs(shutil.which(f"python{version}")):
            continue
        found = sorted(
            root.glob(f"{version}.*/bin/python{version}"),
            key=lambda exe: [int(p) if p.isdigit() else -1 for p in exe.parts[-3].split(".")],
        )
        for exe in reversed(found):  # the newest patch release that runs
            if _runs(exe):
                os.environ["PATH"] = f"{os.environ.get('PATH', '')}{os.pathsep}{exe.parent}"
                break


_make_findable(MATRIX)


def sync(session: nox.Session, *groups: str) -> None:
    """Install the locked workspace (all packages, the dev group and ``groups``) into
    the session venv."""
    chosen = [arg for group in ("dev", *groups) for arg in ("--group", group)]
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--all-packages",
        *chosen,
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
def docs(session: nox.Session) -> None:
    """The documentation site, strictly: a warning (a broken link or anchor, a page
    missing from the nav, an API object not found) fails the build.  The site goes
    to ``.nox/docs/site``, not into the repository."""
    sync(session, "docs")
    site = Path(session.virtualenv.location) / "site"
    quiet = {"NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site), *session.posargs, env=quiet)


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


@nox.session(python=MATRIX, name="tests-matrix")
def tests_matrix(session: nox.Session) -> None:
    """Configuration, the public API, the cache and a Runner example, on another Python."""
    sync(session)
    session.run("pytest", *MATRIX_TESTS, "-p", "no:cacheprovider", *session.posargs)


RELEASE = ("flamepy", "flmrun", "flame-testkit")


@nox.session(venv_backend="none")
def install(session: nox.Session) -> None:
    """Outside the workspace (docs/install.md): the wheels installed with pip into a fresh
    venv and ``examples/runner_hello.py`` run there, on the embedded local cluster, from a
    project directory of its own; the package folders with ``uv pip install``; ``uv add``
    of the folders, flamepy first."""
    import tomllib

    repo = Path(__file__).resolve().parent
    version = tomllib.loads((repo / "packages/flamepy/pyproject.toml").read_text())["project"][
        "version"
    ]
    env = {"UV_PYTHON_DOWNLOADS": "never"}
    tmp = Path(tempfile.mkdtemp(prefix="flame-install-"))
    try:
        dist = tmp / "dist"
        session.run(
            "uv", "build", "--all-packages", "--wheel", "--quiet", "--out-dir", str(dist),
            external=True, env=env,
        )  # fmt: skip
        wheels = [f"{name.replace('-', '_')}-{version}-py3-none-any.whl" for name in RELEASE]
        assert sorted(p.name for p in dist.glob("*.whl")) == sorted(wheels), list(dist.iterdir())

        # The wheels, with pip: the command of docs/install.md and of flamepy's hints.
        venv = tmp / "wheels"
        session.run("uv", "venv", "--seed", "--quiet", "-p", sys.executable, str(venv),
                    external=True, env=env)  # fmt: skip
        with session.chdir(dist):
            session.run(str(venv / "bin/pip"), "install", "--quiet", "--disable-pip-version-check",
                        *wheels, external=True)  # fmt: skip
        project = tmp / "project"
        project.mkdir()
        shutil.copy(repo / "examples/runner_hello.py", project)
        keep = ("PATH", "UV_CACHE_DIR", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "TMPDIR", "LANG")
        clean = {k: v for k, v in os.environ.items() if k in keep}
        clean["HOME"] = str(tmp / "home")  # no ~/.flame/flame.yaml: the embedded cluster
        with session.chdir(project):
            out = session.run(str(venv / "bin/python"), "runner_hello.py", silent=True,
                              external=True, env=clean, include_outer_env=False)  # fmt: skip
        printed = [line for line in str(out).splitlines() if line.strip().isdigit()]
        assert printed == ["3", "4", "14", "28"], out
        _imports(session, venv / "bin/python")

        # The package folders, with uv pip install, into another fresh venv.
        folders = tmp / "folders"
        session.run("uv", "venv", "--quiet", "-p", sys.executable, str(folders),
                    external=True, env=env)  # fmt: skip
        session.run("uv", "pip", "install", "--quiet", "--python", str(folders / "bin/python"),
                    *(str(repo / "packages" / name) for name in RELEASE),
                    external=True, env=env)  # fmt: skip
        _imports(session, folders / "bin/python")

        # uv add of the folders in a new project, flamepy first (a conflict before).
        app = tmp / "app"
        session.run("uv", "init", "--quiet", "--bare", "--no-workspace", "-p", sys.executable,
                    str(app), external=True, env=env)  # fmt: skip
        for name in RELEASE:
            session.run("uv", "add", "--quiet", "--no-sync", "--directory", str(app),
                        str(repo / "packages" / name), external=True, env=env)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _imports(session: nox.Session, python: Path) -> None:
    """The three packages import from the venv of ``python``, not from the repository."""
    code = (
        "import sys, flamepy, flmrun, flame_testkit\n"
        "for m in (flamepy, flmrun, flame_testkit):\n"
        "    assert m.__file__.startswith(sys.prefix), m.__file__\n"
    )
    session.run(str(python), "-c", code, external=True)


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
