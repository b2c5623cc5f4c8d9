"""Installer tools resolved outside any project, index settings, and the size
budget of installed environments (with instances holding theirs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flmrun import _envs
from flmrun._install import _settings
from flmrun._tools import resolve_tool


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_a_shim_is_resolved_to_its_program_from_a_neutral_directory(tmp_path: Path) -> None:
    """A pyenv-style shim fails where a .python-version names a Python without the
    tool; resolution asks the manager from the home directory instead."""
    real = _executable(tmp_path / "versions/3.11/bin/uv", "#!/bin/sh\necho real-uv\n")
    _executable(
        tmp_path / "manager/shims/uv",
        "#!/bin/sh\n[ -f .python-version ] && exit 127\nexec " + str(real) + ' "$@"\n',
    )
    _executable(
        tmp_path / "manager/bin/pyenv",
        f'#!/bin/sh\n[ "$1" = which ] && [ ! -f .python-version ] && echo {real} && exit 0\n'
        "exit 1\n",
    )
    project = tmp_path / "project"
    project.mkdir()
    (project / ".python-version").write_text("3.12\n")
    shim = str(tmp_path / "manager/shims/uv")
    assert subprocess.run([shim, "--version"], cwd=project, check=False).returncode == 127
    found = resolve_tool("uv", path=str(tmp_path / "manager/shims"))
    assert found == str(real)
    out = subprocess.run([found], cwd=project, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "real-uv"  # the project's file no longer matters


def test_a_shim_that_cannot_be_resolved_gives_way_to_the_next_tool(tmp_path: Path) -> None:
    _executable(tmp_path / "shims/uv", "#!/bin/sh\nexit 127\n")
    later = _executable(tmp_path / "bin/uv", "#!/bin/sh\necho later\n")
    path = os.pathsep.join([str(tmp_path / "shims"), str(tmp_path / "bin")])
    assert resolve_tool("uv", path=path) == str(later)
    assert resolve_tool("no-such-tool", path=path) is None


def test_index_settings_reach_both_installers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UV_INDEX_URL", "PIP_INDEX_URL", "UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://cluster.example/simple")
    merged = _settings({"UV_INDEX_URL": "https://given.example/simple", "HOME": "/"})
    assert merged["UV_INDEX_URL"] == merged["PIP_INDEX_URL"] == "https://given.example/simple"
    assert merged["UV_EXTRA_INDEX_URL"] == "https://cluster.example/simple"  # the cluster's
    assert "HOME" not in merged


def _install_dir(root: Path, name: str, size: int, used: float) -> Path:
    home = root / name
    (home / "deps").mkdir(parents=True)
    (home / "deps" / "blob").write_bytes(b"x" * size)
    marker = home / _envs.MARKER_NAME
    marker.write_text(json.dumps({"bytes": size}))
    os.utime(marker, (used, used))
    return home


def test_least_recently_used_environments_go_beyond_the_budget(tmp_path: Path) -> None:
    old = time.time() - 3 * _envs.PRUNE_GRACE
    homes = [_install_dir(tmp_path, f"env-{i}", 1000, old + i) for i in range(4)]
    recent = _install_dir(tmp_path, "env-recent", 1000, time.time())  # within the grace
    removed = _envs.prune_environments(tmp_path, keep=[homes[0]], limit=3000)
    # Oldest first, but the kept one and the recent one stay.
    assert removed == [homes[1], homes[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env-0", "env-3", "env-recent"]
    assert recent.is_dir()


def test_an_environment_an_instance_holds_is_not_removed(tmp_path: Path) -> None:
    old = time.time() - 3 * _envs.PRUNE_GRACE
    held = _install_dir(tmp_path, "env-held", 1000, old)
    free = _install_dir(tmp_path, "env-free", 1000, old + 1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from flmrun._envs import hold_in_use
                print(len(hold_in_use([{str(held / "deps")!r}])), flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "1"
        assert _envs.prune_environments(tmp_path, keep=[], limit=0) == [free]
        assert held.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert _envs.prune_environments(tmp_path, keep=[], limit=0) == [held]  # released
