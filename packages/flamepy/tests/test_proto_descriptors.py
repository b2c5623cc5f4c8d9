"""Every field, enum value and RPC in the spec's tables matches our compiled descriptors."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from flamepy.proto import frontend_pb2, shim_pb2, types_pb2
from spec_tables import parse, spec_dir

SPEC = spec_dir()
pytestmark = pytest.mark.skipif(SPEC is None, reason="shared/spec not found beside the repo")

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_BOOL: "bool",
}
FILES = (types_pb2.DESCRIPTOR, frontend_pb2.DESCRIPTOR, shim_pb2.DESCRIPTOR)


def _tables():
    assert SPEC is not None
    return parse((SPEC / "flame-wire.md").read_text())


def _message(name: str) -> Descriptor:
    for fd in FILES:
        if name in fd.message_types_by_name:
            return fd.message_types_by_name[name]
    raise AssertionError(f"message {name} missing from our protos")


def _type_name(f: FieldDescriptor) -> str:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return f.message_type.name
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f.enum_type.name
    return _SCALARS[f.type]


def _label(f: FieldDescriptor) -> str:
    if f.is_repeated:
        return "repeated"
    if f.has_presence and f.containing_oneof is not None:  # proto3 optional
        return "optional"
    return ""


def test_spec_tables_were_found() -> None:
    messages, enums, rpcs = _tables()
    assert len(messages) >= 51
    assert len(enums) == 6
    assert len([r for r in rpcs if r.service == "Frontend"]) == 18
    assert len([r for r in rpcs if r.service == "Instance"]) == 3


def test_every_message_field_matches_the_spec() -> None:
    messages, _, _ = _tables()
    problems = []
    for name, spec in messages.items():
        desc = _message(name)
        ours = {f.name: f for f in desc.fields}
        expected = {f.name for f in spec.fields}
        if set(ours) != expected:
            problems.append(f"{name}: fields {sorted(ours)} != spec {sorted(expected)}")
        for f in spec.fields:
            got = ours.get(f.name)
            if got is None:
                continue
            actual = (got.number, _type_name(got), _label(got))
            if actual != (f.number, f.type, f.label):
                problems.append(f"{name}.{f.name}: {actual} != spec {(f.number, f.type, f.label)}")
        for number in spec.absent_numbers:
            if number in {f.number for f in desc.fields}:
                problems.append(f"{name}: number {number} must stay unused")
    assert not problems, "\n".join(problems)


def test_reserved_ranges_match_the_spec() -> None:
    from google.protobuf import descriptor_pb2

    messages, _, _ = _tables()
    proto = descriptor_pb2.FileDescriptorProto()
    types_pb2.DESCRIPTOR.CopyToProto(proto)
    by_name = {m.name: m for m in proto.message_type}
    for name, spec in messages.items():
        if not spec.reserved_numbers:
            continue
        msg = by_name[name]
        reserved = {n for r in msg.reserved_range for n in range(r.start, r.end)}
        assert set(spec.reserved_numbers) <= reserved, name
        assert set(spec.reserved_names) <= set(msg.reserved_name), name


def test_every_enum_matches_the_spec() -> None:
    _, enums, _ = _tables()
    for name, values in enums.items():
        desc = types_pb2.DESCRIPTOR.enum_types_by_name[name]
        assert {v.name: v.number for v in desc.values} == values, name


def test_every_rpc_matches_the_spec() -> None:
    _, _, rpcs = _tables()
    services = {
        "Frontend": frontend_pb2.DESCRIPTOR.services_by_name["Frontend"],
        "Instance": shim_pb2.DESCRIPTOR.services_by_name["Instance"],
    }
    for service, desc in services.items():
        expected = {r.name for r in rpcs if r.service == service}
        assert {m.name for m in desc.methods} == expected, service
    for rpc in rpcs:
        method = services[rpc.service].methods_by_name[rpc.name]
        response = rpc.response.removeprefix("stream ").strip()
        assert method.input_type.name == rpc.request, rpc.name
        assert method.output_type.name == response, rpc.name
        assert method.server_streaming == rpc.server_streaming, rpc.name
        assert not method.client_streaming, rpc.name
        assert method.full_name == f"flame.v1.{rpc.service}.{rpc.name}"
