"""Dependencies as users declare them (requirements.txt, pyproject.toml, uv.lock,
Runner(dependencies=...)), installed on the executor from a package index that
runs on 127.0.0.1, into environments keyed by the declaration, not the code."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from _index import LocalIndex

import flamepy
from flame_testkit import ClusterThread
from flamepy import InvalidArgumentError, Runner

WAIT = 120.0

JOB = """
import sys


def where():
    import flamedemo

    return flamedemo.VERSION


def python():
    return "%d.%d" % sys.version_info[:2]

EDIT = 0
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    served = LocalIndex(tmp_path_factory.mktemp("wheels"), "flamedemo", ["1.0", "2.0"])
    with served.running():
        yield served


@pytest.fixture
def job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flame_env: ClusterThread
) -> Iterator[tuple[Path, ModuleType]]:
    """A project directory (the cwd) holding a module that imports ``flamedemo``."""
    name = f"job_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "project"
    root.mkdir()
    (root / f"{name}.py").write_text(JOB)
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    yield root, importlib.import_module(name)
    sys.modules.pop(name, None)


def _environments(cluster: ClusterThread, source: str, deps: list[str]) -> list[Path]:
    """The executor-side environments installed for this declaration."""
    root = cluster.cluster.work_dir / "installs" / "envs"
    found = []
    for home in root.glob("env-*"):
        marker = home / ".installed"
        if marker.is_file():
            record = json.loads(marker.read_text())
            if record.get("source") == source and record.get("dependencies") == deps:
                found.append(home)
    return found


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_flamedemo_is_not_in_the_client_environment() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("flamedemo")


def test_a_requirements_txt_project_gets_its_dependencies_and_code_edits_share_them(
    job: tuple[Path, ModuleType], index: LocalIndex, flame_cluster: ClusterThread
) -> None:
    root, lib = job
    (root / "requirements.txt").write_text("# what the project needs\nflamedemo\n")
    settings = {"UV_INDEX_URL": index.url}
    urls = []
    for edit in (1, 2, 3):
        source = root / f"{lib.__name__}.py"
        source.write_text(source.read_text().replace(f"EDIT = {edit - 1}", f"EDIT = {edit}"))
        with Runner(f"deps-{uuid.uuid4().hex[:6]}", index_settings=settings) as rr:
            assert rr.service(lib.where)().get(WAIT) == "2.0"  # the newest on the index
            urls.append(rr.package_url)
    assert len(set(urls)) == 3  # three versions of the code...
    envs = _environments(flame_cluster, "requirements.txt", ["flamedemo"])
    assert len(envs) == 1  # ...one environment
    size = _size(envs[0])
    print(f"\nrequirements.txt project, 3 code versions: 1 environment, {size} bytes")
    assert size < 200_000  # flamedemo alone, not a copy of the client's packages


def test_requirements_includes_are_followed(
    job: tuple[Path, ModuleType], index: LocalIndex
) -> None:
    root, lib = job
    (root / "reqs").mkdir()
    (root / "reqs" / "base.txt").write_text("flamedemo\n-c pins.txt\n")
    (root / "reqs" / "pins.txt").write_text("flamedemo==1.0\n")
    (root / "requirements.txt").write_text("-r reqs/base.txt\n")
    with Runner("deps-includes", index_settings={"PIP_INDEX_URL": index.url}) as rr:
        assert rr.service(lib.where)().get(WAIT) == "1.0"  # the constraint applied


def test_a_uv_lock_is_installed_exactly(
    job: tuple[Path, ModuleType], index: LocalIndex, flame_cluster: ClusterThread
) -> None:
    root, lib = job
    (root / "pyproject.toml").write_text(
        '[project]\nname = "locked-job"\nversion = "0.1.0"\nrequires-python = ">=3.9"\n'
        'dependencies = ["flamedemo"]\n'
    )
    (root / "requirements.txt").write_text("flamedemo\n")  # uv.lock comes first
    index.served = {"1.0"}  # the lock was made when 1.0 was the newest
    try:
        env = {**os.environ, "UV_INDEX_URL": index.url, "UV_PYTHON_DOWNLOADS": "never"}
        locked = subprocess.run(
            ["uv", "lock", "--python", sys.executable],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert locked.returncode == 0, locked.stderr
    finally:
        index.served = {"1.0", "2.0"}
    preview = Runner("deps-lock", dry_run=True).preview
    assert preview is not None
    assert preview.dependencies.source == "uv.lock"
    assert preview.dependencies.requirements == ("flamedemo==1.0",)
    with Runner("deps-lock", index_settings={"UV_INDEX_URL": index.url}) as rr:
        assert rr.service(lib.where)().get(WAIT) == "1.0"  # pinned, though 2.0 is out
    assert _environments(flame_cluster, "uv.lock", ["flamedemo==1.0"])


def test_runner_dependencies_merge_with_the_projects(
    job: tuple[Path, ModuleType], index: LocalIndex
) -> None:
    root, lib = job
    (root / "pyproject.toml").write_text(
        '[project]\nname = "merged-job"\nversion = "0.1.0"\ndependencies = []\n'
    )
    (root / "requirements.txt").write_text("# nothing here\n")
    with Runner(
        "deps-merged", dependencies=["flamedemo<2"], index_settings={"UV_INDEX_URL": index.url}
    ) as rr:
        assert rr.service(lib.where)().get(WAIT) == "1.0"


def test_a_python_version_file_does_not_change_the_tools(
    job: tuple[Path, ModuleType], index: LocalIndex
) -> None:
    """A .python-version naming a Python without uv made a pyenv shim of uv fail
    (exit 127) inside the package; the cluster resolves uv once, at its start."""
    root, lib = job
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.11"
    (root / ".python-version").write_text(f"{other}\n")
    (root / "requirements.txt").write_text("flamedemo==2.0\n")
    with Runner("deps-pyversion", index_settings={"UV_INDEX_URL": index.url}) as rr:
        assert rr.service(lib.where)().get(WAIT) == "2.0"


def test_a_dry_run_reports_and_reaches_no_cluster(
    job: tuple[Path, ModuleType],
    flame_connection: flamepy.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, lib = job
    (root / "requirements.txt").write_text("flamedemo>=1\n")
    name = f"dry-{uuid.uuid4().hex[:6]}"
    with caplog.at_level(logging.INFO, logger="flamepy.runner"):
        rr = Runner(name, dependencies=["numpy"], dry_run=True)
    preview = rr.preview
    assert preview is not None
    assert f"{lib.__name__}.py" in preview.files and "pyproject.toml" in preview.files
    assert preview.dependencies.source == "requirements.txt"
    assert preview.dependencies.requirements == ("flamedemo>=1",)
    assert preview.dependencies.extras == ("numpy",)
    text = str(preview)
    assert "requirements.txt: flamedemo>=1" in text and "numpy" in text
    assert any("requirements.txt: flamedemo>=1" in r.getMessage() for r in caplog.records)
    assert not [a for a in flame_connection.list_applications() if a.name.startswith(name)]
    with pytest.raises(InvalidArgumentError, match="dry_run"):
        rr.service(lib.where)
    rr.close()


def test_an_unreadable_declaration_is_a_clear_error(job: tuple[Path, ModuleType]) -> None:
    root, _ = job
    (root / "requirements.txt").write_text("-r missing.txt\n")
    with pytest.raises(InvalidArgumentError, match=r"missing\.txt"):
        Runner("deps-bad", dry_run=True)


def test_index_settings_take_only_index_variables(job: tuple[Path, ModuleType]) -> None:
    with pytest.raises(InvalidArgumentError, match="HOME"):
        Runner("deps-settings", index_settings={"HOME": "/"}, dry_run=True)
