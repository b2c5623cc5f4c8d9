"""The package index: an unchanged tree is known without a build; anything odd
about the index only means a build."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flamepy.runner import _package_index
from flamepy.runner._package import build_tree, indexed_package, scan_tree


@pytest.fixture
def tree_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "project"
    root.mkdir()
    (root / "job.py").write_text("X = 1\n")
    return root


def test_a_built_tree_is_remembered_owner_only(tree_root: Path, tmp_path: Path) -> None:
    tree = scan_tree(tree_root, "demo")
    assert indexed_package(tree) is None
    built = build_tree(tree, tmp_path / "out")
    known = indexed_package(scan_tree(tree_root, "demo"))
    assert known is not None and known.path is None
    assert (known.file_name, known.digest, known.files) == (
        built.file_name,
        built.digest,
        built.files,
    )
    directory = _package_index.index_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()] == [0o600]


def test_any_change_misses_the_index(tree_root: Path, tmp_path: Path) -> None:
    build_tree(scan_tree(tree_root, "demo"), tmp_path / "out")
    assert indexed_package(scan_tree(tree_root, "other-name")) is None
    assert indexed_package(scan_tree(tree_root, "demo", dependencies=["numpy"])) is None
    (tree_root / "new.py").write_text("")
    assert indexed_package(scan_tree(tree_root, "demo")) is None
    assert indexed_package(scan_tree(tree_root, "demo", excludes=["new.py"])) is not None


def test_a_corrupt_entry_only_means_a_build(tree_root: Path, tmp_path: Path) -> None:
    tree = scan_tree(tree_root, "demo")
    build_tree(tree, tmp_path / "out")
    (_package_index.index_dir() / f"{tree.fingerprint}.json").write_text("{not json")
    assert indexed_package(scan_tree(tree_root, "demo")) is None
    assert build_tree(tree, tmp_path / "out").path is not None
    assert indexed_package(scan_tree(tree_root, "demo")) is not None  # written again


def test_an_unwritable_index_only_means_a_build(tree_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the index directory would go")
    tree = scan_tree(tree_root, "demo")
    assert build_tree(tree, tmp_path / "out").path is not None
    assert indexed_package(tree) is None


def test_the_index_keeps_the_most_recently_used_entries(
    tree_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_package_index, "MAX_ENTRIES", 3)
    trees = []
    for i in range(5):
        (tree_root / "job.py").write_text(f"X = {i}\n")
        tree = scan_tree(tree_root, "demo")
        build_tree(tree, tmp_path / "out")
        trees.append(tree)
        past = 1_000_000_000 * (i + 1)
        for entry in _package_index.index_dir().iterdir():
            if entry.stem == tree.fingerprint:
                os.utime(entry, ns=(past, past))
    names = {p.stem for p in _package_index.index_dir().iterdir()}
    assert names == {t.fingerprint for t in trees[2:]}
