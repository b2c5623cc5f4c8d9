"""Group 4: our compiled flame.v1 descriptors against flamepy 0.6.0's, field by field.

The peer dumps its ``flamepy.proto.{types,frontend,shim}_pb2`` descriptors as JSON
(``peer/descriptors.py``); the same code (``peer/_descriptor_json.py``, protobuf
only, loaded here by path) describes ours.  Every message, field (name, number,
type, type name, label, proto3 ``optional``, oneof, runtime presence), enum value,
service method (types and streaming flags), reserved range and option must match.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest
from conftest import PEER_DIR, ScenarioRunner

from flamepy.proto import frontend_pb2, shim_pb2, types_pb2

FILES = ("types", "frontend", "shim")
GO_PACKAGE = "github.com/flame-sh/flame/sdk/go/rpc/v1"


def _load_describer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "conformance_descriptor_json", PEER_DIR / "_descriptor_json.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peer_files(peer_python: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("descriptors-home")
    run = ScenarioRunner(peer_python, PEER_DIR, home, None, None, True)
    files: dict[str, Any] = run("descriptors.py", configured=False)["files"]
    return files


@pytest.fixture(scope="module")
def our_files() -> dict[str, Any]:
    modules = {"types": types_pb2, "frontend": frontend_pb2, "shim": shim_pb2}
    files: dict[str, Any] = _load_describer().describe_modules(modules)
    return files


def _differences(ours: Any, peer: Any, path: str = "") -> list[str]:
    """Readable paths where two JSON documents differ."""
    if isinstance(ours, dict) and isinstance(peer, dict):
        out = []
        for key in sorted(set(ours) | set(peer)):
            if key not in ours:
                out.append(f"{path}/{key}: only in the peer: {peer[key]!r}")
            elif key not in peer:
                out.append(f"{path}/{key}: only in ours: {ours[key]!r}")
            else:
                out.extend(_differences(ours[key], peer[key], f"{path}/{key}"))
        return out
    return [] if ours == peer else [f"{path}: ours {ours!r} != peer {peer!r}"]


@pytest.mark.parametrize("name", FILES)
def test_file_identity(name: str, our_files: dict[str, Any], peer_files: dict[str, Any]) -> None:
    ours, peer = our_files[name], peer_files[name]
    keys = ("name", "package", "syntax", "dependencies", "options")
    assert {k: ours[k] for k in keys} == {k: peer[k] for k in keys}
    assert ours["package"] == "flame.v1" and ours["name"] == f"{name}.proto"
    # No wire effect, but stated by the spec: compare it too.
    assert ours["language_options"] == peer["language_options"] == {"go_package": GO_PACKAGE}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("kind", ["messages", "enums", "services"])
def test_definitions_match_field_by_field(
    name: str, kind: str, our_files: dict[str, Any], peer_files: dict[str, Any]
) -> None:
    differences = _differences(our_files[name][kind], peer_files[name][kind])
    assert not differences, f"{name}.proto {kind} differ:\n" + "\n".join(differences)


def test_counts_match_the_spec(our_files: dict[str, Any], peer_files: dict[str, Any]) -> None:
    """flame-wire.md: 51 messages, 6 enums and 2 services across the three files."""
    for files in (our_files, peer_files):
        assert sum(len(f["messages"]) for f in files.values()) == 51
        assert sum(len(f["enums"]) for f in files.values()) == 6
        assert sum(len(f["services"]) for f in files.values()) == 2


@pytest.mark.parametrize("name", FILES)
def test_normalized_descriptors_are_byte_identical(
    name: str, our_files: dict[str, Any], peer_files: dict[str, Any]
) -> None:
    """The catch-all: the FileDescriptorProtos, normalized only for what has no wire
    effect (source info, json_name, go_package, field declaration order), serialize
    to the same bytes."""
    assert our_files[name]["normalized"] == peer_files[name]["normalized"]


def test_presence_of_fields_the_wire_depends_on(our_files: dict[str, Any]) -> None:
    """Spot checks of flame-wire.md §8 hazards, on ours (the peer matches by the above)."""
    shim = our_files["shim"]["messages"]
    task_context = shim[".flame.v1.TaskContext"]["fields"]
    assert set(task_context) == {"task_id", "session_id", "input"}
    assert task_context["input"]["number"] == 4  # there is no field 3
    assert task_context["input"]["has_presence"] and task_context["input"]["proto3_optional"]
    types = our_files["types"]["messages"]
    status = types[".flame.v1.SessionStatus"]["fields"]
    assert (status["events"]["number"], status["cancelled"]["number"]) == (8, 9)
    spec = types[".flame.v1.SessionSpec"]["fields"]
    assert spec["max_instances"]["has_presence"] and not spec["min_instances"]["has_presence"]
    task_state = our_files["types"]["enums"][".flame.v1.TaskState"]["values"]
    assert task_state["Cancelled"] == 4
    frontend = our_files["frontend"]["services"][".flame.v1.Frontend"]["methods"]
    streaming = sorted(m for m, d in frontend.items() if d["server_streaming"])
    assert streaming == ["ListTask", "WatchTask"]
