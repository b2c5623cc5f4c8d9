"""Compiled protobuf descriptors as comparable JSON.  Depends on protobuf only.

Used on both sides: the peer scenario ``descriptors.py`` imports it under the peer
python for flamepy 0.6.0's ``flamepy.proto`` modules, and ``test_descriptors.py``
loads it by path for ours.  Everything is read from ``FileDescriptor.serialized_pb``
parsed as a ``FileDescriptorProto`` (stable across protobuf versions), plus the
runtime view of field presence (``has_presence``, ``containing_oneof``) where the
installed protobuf offers it.

Normalized away, as having no effect on the wire: source info, ``json_name``,
language-specific file options (``go_package`` and the like; reported apart) and
the declaration order of fields (wire order is by number, parsers take any order).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, text_format

FieldProto = descriptor_pb2.FieldDescriptorProto
LANGUAGE_OPTIONS = (
    "go_package",
    "java_package",
    "java_outer_classname",
    "java_multiple_files",
    "csharp_namespace",
    "objc_class_prefix",
    "php_namespace",
    "ruby_package",
    "swift_prefix",
)


def _options(options: Any) -> str:
    return text_format.MessageToString(options, as_one_line=True)


def _runtime_field(pool: Any, message: str, field: str) -> dict[str, Any]:
    """Presence as the installed protobuf computes it (None where it cannot say)."""
    try:
        descriptor = pool.FindMessageTypeByName(message.lstrip(".")).fields_by_name[field]
    except KeyError:
        return {"has_presence": None, "containing_oneof": None}
    oneof = descriptor.containing_oneof
    return {
        "has_presence": getattr(descriptor, "has_presence", None),
        "containing_oneof": None if oneof is None else oneof.name,
    }


def _field(pool: Any, message: str, msg: Any, field: Any) -> dict[str, Any]:
    oneof = msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return {
        "number": field.number,
        "type": FieldProto.Type.Name(field.type),
        "type_name": field.type_name or None,
        "label": FieldProto.Label.Name(field.label),
        "is_repeated": field.label == FieldProto.LABEL_REPEATED,
        "proto3_optional": field.proto3_optional,
        "oneof": oneof,
        "default_value": field.default_value or None,
        "options": _options(field.options),
        **_runtime_field(pool, message, field.name),
    }


def _enum(enum: Any) -> dict[str, Any]:
    return {
        "values": {v.name: v.number for v in enum.value},
        "reserved_ranges": [[r.start, r.end] for r in enum.reserved_range],
        "reserved_names": list(enum.reserved_name),
        "options": _options(enum.options),
    }


def _messages(
    pool: Any, scope: str, messages: Any, out: dict[str, Any], enums: dict[str, Any]
) -> None:
    for msg in messages:
        name = f"{scope}.{msg.name}"
        out[name] = {
            "fields": {f.name: _field(pool, name, msg, f) for f in msg.field},
            "oneofs": [o.name for o in msg.oneof_decl],
            "reserved_ranges": [[r.start, r.end] for r in msg.reserved_range],
            "reserved_names": list(msg.reserved_name),
            "extension_ranges": [[r.start, r.end] for r in msg.extension_range],
            "options": _options(msg.options),
        }
        for enum in msg.enum_type:
            enums[f"{name}.{enum.name}"] = _enum(enum)
        _messages(pool, name, msg.nested_type, out, enums)


def normalized_proto(file_descriptor: Any) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto without source info, json_name, language options,
    with every message's fields in number order."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(file_descriptor.serialized_pb)
    proto.ClearField("source_code_info")
    for option in LANGUAGE_OPTIONS:
        proto.options.ClearField(option)
    if not proto.options.ListFields():
        proto.ClearField("options")

    def fix(messages: Any) -> None:
        for msg in messages:
            fields = sorted(msg.field, key=lambda f: f.number)
            copies = []
            for field in fields:
                copy = FieldProto()
                copy.CopyFrom(field)
                copy.ClearField("json_name")
                copies.append(copy)
            del msg.field[:]
            msg.field.extend(copies)
            fix(msg.nested_type)

    fix(proto.message_type)
    return proto


def describe_file(file_descriptor: Any) -> dict[str, Any]:
    """One compiled ``.proto`` file as JSON-able data."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(file_descriptor.serialized_pb)
    pool = file_descriptor.pool
    scope = f".{proto.package}" if proto.package else ""
    messages: dict[str, Any] = {}
    enums = {f"{scope}.{e.name}": _enum(e) for e in proto.enum_type}
    _messages(pool, scope, proto.message_type, messages, enums)
    services = {
        f"{scope}.{s.name}": {
            "methods": {
                m.name: {
                    "input_type": m.input_type,
                    "output_type": m.output_type,
                    "client_streaming": m.client_streaming,
                    "server_streaming": m.server_streaming,
                    "options": _options(m.options),
                }
                for m in s.method
            },
            "options": _options(s.options),
        }
        for s in proto.service
    }
    options = descriptor_pb2.FileOptions()
    options.CopyFrom(proto.options)
    language = {}
    for option in LANGUAGE_OPTIONS:
        if options.HasField(option):
            language[option] = str(getattr(options, option))
            options.ClearField(option)
    return {
        "name": proto.name,
        "package": proto.package,
        "syntax": proto.syntax,
        "dependencies": list(proto.dependency),
        "options": _options(options),
        "language_options": language,
        "messages": messages,
        "enums": enums,
        "services": services,
        "normalized": normalized_proto(file_descriptor).SerializeToString(deterministic=True).hex(),
    }


def describe_modules(modules: dict[str, Any]) -> dict[str, Any]:
    """``{module label: describe_file(module.DESCRIPTOR)}``."""
    return {label: describe_file(module.DESCRIPTOR) for label, module in modules.items()}
