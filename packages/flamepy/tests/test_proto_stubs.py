"""The committed stubs equal a fresh regeneration from the committed protos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent
COMMITTED = PACKAGE / "src" / "flamepy" / "proto"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_protos", PACKAGE / "scripts" / "gen_protos.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_regeneration(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    fresh = {p.name: p.read_text() for p in _generator().generate(tmp_path / "proto")}
    committed = {
        p.name: p.read_text()
        for p in COMMITTED.iterdir()
        if p.is_file() and (p.suffix in (".py", ".pyi"))
    }
    assert sorted(fresh) == sorted(committed), "stub file set differs: run scripts/gen_protos.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated stubs {stale}: run `nox -s protos` and commit"


def test_stubs_use_package_relative_imports() -> None:
    for path in COMMITTED.glob("*_pb2*.py"):
        text = path.read_text()
        assert "\nimport types_pb2" not in text, path.name


def test_descriptor_file_names_match_flame() -> None:
    from flamepy.proto import frontend_pb2, shim_pb2, types_pb2

    assert types_pb2.DESCRIPTOR.name == "types.proto"
    assert frontend_pb2.DESCRIPTOR.name == "frontend.proto"
    assert shim_pb2.DESCRIPTOR.name == "shim.proto"
    assert {d.name for d in frontend_pb2.DESCRIPTOR.dependencies} == {"types.proto"}
    assert types_pb2.DESCRIPTOR.package == "flame.v1"
