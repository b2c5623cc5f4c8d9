"""Conversions between flame.v1 protobuf messages and flamepy's data types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from flamepy._errors import InvalidArgumentError
from flamepy._types import (
    Application,
    ApplicationAttributes,
    ApplicationSchema,
    ApplicationState,
    Event,
    Executor,
    ExecutorState,
    Node,
    NodeState,
    ResourceRequirement,
    Shim,
    Task,
    TaskState,
)
from flamepy.proto import types_pb2


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def events_from_proto(events: Iterable[types_pb2.Event]) -> list[Event]:
    return [
        Event(
            code=e.code,
            message=e.message if e.HasField("message") else None,
            creation_time=ms_to_datetime(e.creation_time),
        )
        for e in events
    ]


def task_state(value: int) -> TaskState:
    try:
        return TaskState(value)
    except ValueError:
        # A newer server may add states; treat an unknown one as still running.
        return TaskState.RUNNING


def task_from_proto(task: types_pb2.Task) -> Task:
    status = task.status
    return Task(
        id=task.metadata.id,
        session_id=task.spec.session_id,
        state=task_state(status.state),
        creation_time=ms_to_datetime(status.creation_time),
        input=task.spec.input if task.spec.HasField("input") else None,
        output=task.spec.output if task.spec.HasField("output") else None,
        completion_time=(
            ms_to_datetime(status.completion_time) if status.HasField("completion_time") else None
        ),
        events=events_from_proto(status.events),
    )


def resreq_to_proto(req: ResourceRequirement) -> types_pb2.ResourceRequirement:
    return types_pb2.ResourceRequirement(cpu=req.cpu, memory=req.memory, gpu=req.gpu)


def resreq_from_proto(req: types_pb2.ResourceRequirement) -> ResourceRequirement:
    return ResourceRequirement(cpu=req.cpu, memory=req.memory, gpu=req.gpu)


_APP_FIELDS = {f for f in ApplicationAttributes.__dataclass_fields__}


def application_attributes(
    value: ApplicationAttributes | Mapping[str, Any],
) -> ApplicationAttributes:
    """Accept either attributes or a plain dict, as Flame's SDK does."""
    if isinstance(value, ApplicationAttributes):
        return value
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            f"application attributes must be ApplicationAttributes or a dict, "
            f"not {type(value).__name__}"
        )
    unknown = sorted(set(value) - _APP_FIELDS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown application attribute(s) {unknown}; valid names are {sorted(_APP_FIELDS)}"
        )
    data = dict(value)
    if isinstance(data.get("schema"), Mapping):
        data["schema"] = ApplicationSchema(**data["schema"])
    if data.get("shim") is not None and not isinstance(data["shim"], Shim):
        shim = data["shim"]
        data["shim"] = Shim[shim.upper()] if isinstance(shim, str) else Shim(shim)
    return ApplicationAttributes(**data)


def application_spec_to_proto(attrs: ApplicationAttributes) -> types_pb2.ApplicationSpec:
    spec = types_pb2.ApplicationSpec()
    spec.shim = int(attrs.shim or Shim.HOST)  # type: ignore[assignment]
    for name in ("description", "image", "command", "working_directory", "url", "installer"):
        value = getattr(attrs, name)
        if value is not None:
            setattr(spec, name, value)
    if attrs.max_instances is not None:
        spec.max_instances = attrs.max_instances
    if attrs.delay_release is not None:
        spec.delay_release = attrs.delay_release
    spec.labels.extend(attrs.labels or [])
    spec.arguments.extend(attrs.arguments or [])
    for key, val in (attrs.environments or {}).items():
        spec.environments.add(name=key, value=val)
    if attrs.schema is not None:
        schema = spec.schema
        schema.SetInParent()
        for name in ("input", "output", "common_data"):
            value = getattr(attrs.schema, name)
            if value is not None:
                setattr(schema, name, value)
    return spec


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def application_from_proto(app: types_pb2.Application) -> Application:
    spec = app.spec
    schema = None
    if spec.HasField("schema"):
        schema = ApplicationSchema(
            input=_opt(spec.schema, "input"),
            output=_opt(spec.schema, "output"),
            common_data=_opt(spec.schema, "common_data"),
        )
    return Application(
        id=app.metadata.id,
        name=app.metadata.name,
        state=ApplicationState(app.status.state),
        creation_time=ms_to_datetime(app.status.creation_time),
        shim=Shim(spec.shim),
        image=_opt(spec, "image"),
        description=_opt(spec, "description"),
        labels=list(spec.labels),
        command=_opt(spec, "command"),
        arguments=list(spec.arguments),
        environments={e.name: e.value for e in spec.environments},
        working_directory=_opt(spec, "working_directory"),
        max_instances=_opt(spec, "max_instances"),
        delay_release=_opt(spec, "delay_release"),
        schema=schema,
        url=_opt(spec, "url"),
        installer=_opt(spec, "installer"),
    )


def executor_from_proto(ex: types_pb2.Executor) -> Executor:
    return Executor(
        id=ex.metadata.id,
        node=ex.spec.node,
        state=ExecutorState(ex.status.state),
        session_id=_opt(ex.status, "session_id"),
        resreq=resreq_from_proto(ex.spec.resreq),
        shim=Shim(ex.spec.shim),
    )


def node_from_proto(node: types_pb2.Node) -> Node:
    status = node.status
    return Node(
        name=node.metadata.name,
        state=NodeState(status.state),
        hostname=node.spec.hostname,
        capacity=resreq_from_proto(status.capacity),
        allocatable=resreq_from_proto(status.allocatable),
        arch=status.info.arch,
        os=status.info.os,
    )
