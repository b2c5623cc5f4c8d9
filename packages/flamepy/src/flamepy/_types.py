"""Plain data types of the client API.

Names, fields and defaults follow Flame's own Python SDK (0.6) so that code written
for it runs unchanged.  The one addition is ``TaskState.CANCELLED`` (wire value 4),
which the reference SDK lacks.  Conversions to and from protobuf live in
``_convert.py``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flamepy._errors import InvalidArgumentError

TaskID = str
SessionID = str
ApplicationID = str
Message = bytes
TaskInput = bytes
TaskOutput = bytes
CommonData = bytes


class SessionState(enum.IntEnum):
    OPEN = 0
    CLOSED = 1


class TaskState(enum.IntEnum):
    PENDING = 0
    RUNNING = 1
    SUCCEED = 2
    FAILED = 3
    CANCELLED = 4

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_TASK_STATES


_TERMINAL_TASK_STATES = frozenset({TaskState.SUCCEED, TaskState.FAILED, TaskState.CANCELLED})


class ApplicationState(enum.IntEnum):
    ENABLED = 0
    DISABLED = 1


class Shim(enum.IntEnum):
    HOST = 0
    WASM = 1


class ExecutorState(enum.IntEnum):
    UNKNOWN = 0
    VOID = 1
    IDLE = 2
    BINDING = 3
    BOUND = 4
    UNBINDING = 5
    RELEASING = 6
    RELEASED = 7


class NodeState(enum.IntEnum):
    UNKNOWN = 0
    READY = 1
    NOT_READY = 2


@dataclass
class Event:
    code: int
    message: str | None = None
    creation_time: datetime | None = None


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse ``"1Gi"``, ``"512M"`` or ``"1024"`` into bytes."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise InvalidArgumentError(
            f"invalid size {text!r}: use a number with an optional unit such as 512Mi or 2G"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


@dataclass
class ResourceRequirement:
    """Per-instance resources: CPU count, memory in bytes, GPU count."""

    cpu: int = 0
    memory: int = 0
    gpu: int = 0

    @classmethod
    def from_string(cls, text: str) -> ResourceRequirement:
        """Parse the cluster format ``cpu=N,mem=SIZE,gpu=N`` (each part optional)."""
        req = cls()
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep:
                raise InvalidArgumentError(
                    f"invalid resource requirement {text!r}: expected key=value pairs "
                    "like cpu=2,mem=4Gi,gpu=0"
                )
            if key == "cpu":
                req.cpu = int(value)
            elif key in ("mem", "memory"):
                req.memory = parse_size(value)
            elif key == "gpu":
                req.gpu = int(value)
            else:
                raise InvalidArgumentError(
                    f"unknown resource {key!r} in {text!r}: use cpu, mem or gpu"
                )
        return req


@dataclass
class SessionAttributes:
    application: str
    id: str | None = None
    common_data: Any = None
    min_instances: int = 0
    max_instances: int | None = None
    batch_size: int = 1
    resreq: ResourceRequirement | None = None


@dataclass
class ApplicationSchema:
    input: str | None = None
    output: str | None = None
    common_data: str | None = None


@dataclass
class ApplicationAttributes:
    shim: Shim | None = None
    image: str | None = None
    description: str | None = None
    labels: list[str] | None = None
    command: str | None = None
    arguments: list[str] | None = None
    environments: dict[str, str] | None = None
    working_directory: str | None = None
    max_instances: int | None = None
    delay_release: int | None = None
    schema: ApplicationSchema | None = None
    url: str | None = None
    installer: str | None = None


@dataclass
class Application:
    id: str
    name: str
    state: ApplicationState
    creation_time: datetime
    shim: Shim | None = None
    image: str | None = None
    description: str | None = None
    labels: list[str] | None = None
    command: str | None = None
    arguments: list[str] | None = None
    environments: dict[str, str] | None = None
    working_directory: str | None = None
    max_instances: int | None = None
    delay_release: int | None = None
    schema: ApplicationSchema | None = None
    url: str | None = None
    installer: str | None = None


@dataclass
class Task:
    id: str
    session_id: str
    state: TaskState
    creation_time: datetime
    input: Any = None
    output: Any = None
    completion_time: datetime | None = None
    events: list[Event] | None = None

    def is_completed(self) -> bool:
        return self.state.is_terminal

    def is_failed(self) -> bool:
        return self.state == TaskState.FAILED

    def failure_message(self) -> str | None:
        """The text of the last Failed event, if the server recorded one."""
        for event in reversed(self.events or []):
            if event.code == TaskState.FAILED and event.message:
                return event.message
        return None


@dataclass
class Executor:
    id: str
    node: str
    state: ExecutorState
    session_id: str | None = None
    resreq: ResourceRequirement | None = None
    shim: Shim = Shim.HOST


@dataclass
class Node:
    name: str
    state: NodeState
    hostname: str = ""
    capacity: ResourceRequirement = field(default_factory=ResourceRequirement)
    allocatable: ResourceRequirement = field(default_factory=ResourceRequirement)
    arch: str = ""
    os: str = ""


class TaskInformer:
    """Told of a watched task's updates (Flame SDK 0.6's interface): override
    :meth:`on_update` and :meth:`on_error`; both do nothing by default."""

    def on_update(self, task: Task) -> None:
        """A new state of the task."""

    def on_error(self, error: Exception) -> None:
        """The watch failed with ``error``."""
