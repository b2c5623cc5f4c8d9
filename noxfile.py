"""Project sessions.  ``uv run nox`` runs the default set (what CI runs).

* ``lint``: ruff check, ruff format --check, mypy (strict).
* ``tests``: every package's tests; ``tests-flamepy``, ``tests-flmrun`` and
  ``tests-testkit`` run one package each.
* ``protos``: regenerate flamepy's committed gRPC stubs.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"
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
def protos(session: nox.Session) -> None:
    sync(session)
    session.run("python", "packages/flamepy/scripts/gen_protos.py")


if os.environ.get("CI"):
    nox.options.reuse_existing_virtualenvs = False
