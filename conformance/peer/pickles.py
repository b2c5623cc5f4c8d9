"""Peer scenario: the pickled Runner wire types, in both directions.

Input: ``{"ours": {label: hex cloudpickle}}`` made by our SDK.  The peer loads each
and reports the class it became and whether it is an instance of the peer's own
``flamepy.runner.types.RunnerRequest`` / ``RunnerContext`` or
``flamepy.core.cache.ObjectRef`` (runpy checks exactly that), and its attributes.
It then pickles its own instances of those classes for the test to load.
"""

from __future__ import annotations

from typing import Any

import cloudpickle
from _common import emit, read_input

from flamepy.core.cache import ObjectRef
from flamepy.runner.types import RunnerContext, RunnerRequest

WIRE_TYPES = {
    "RunnerRequest": RunnerRequest,
    "RunnerContext": RunnerContext,
    "ObjectRef": ObjectRef,
}


def plain(value: Any) -> Any:
    """Attribute values as JSON-able data (objects by their class name)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, ObjectRef):
        return {"ObjectRef": [value.endpoint, value.key, int(value.version)]}
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def describe(obj: Any) -> dict[str, Any]:
    return {
        "class": f"{type(obj).__module__}.{type(obj).__qualname__}",
        "isinstance": sorted(name for name, cls in WIRE_TYPES.items() if isinstance(obj, cls)),
        "attributes": {k: plain(v) for k, v in sorted(vars(obj).items())},
    }


def double(x: int) -> int:
    return 2 * x


class Tally:
    def __init__(self) -> None:
        self.count = 3


def dumps(obj: Any) -> str:
    return cloudpickle.dumps(obj, protocol=cloudpickle.DEFAULT_PROTOCOL).hex()


def main() -> None:
    given = read_input()
    loaded = {
        label: describe(cloudpickle.loads(bytes.fromhex(data)))
        for label, data in given["ours"].items()
    }
    ref = ObjectRef("grpc://127.0.0.1:9090", "app/ssn/obj", 2)
    peer = {
        "request": dumps(RunnerRequest(method="add", args=(ref, 5), kwargs={"k": ref})),
        "context_function": dumps(RunnerContext(double)),
        "context_class": dumps(RunnerContext(Tally)),
        "context_object": dumps(RunnerContext(Tally())),
        "ref": dumps(ref),
    }
    emit(
        {
            "loaded": loaded,
            "peer_pickles": peer,
        }
    )


if __name__ == "__main__":
    main()
