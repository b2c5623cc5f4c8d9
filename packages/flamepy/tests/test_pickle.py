"""flamepy._pickle: the standard pickle for plain data, cloudpickle for the rest."""

from __future__ import annotations

import pickle

import cloudpickle

from flamepy._pickle import MAX_DEPTH, MAX_ITEMS, dumps, is_plain
from flamepy.core.cache import ObjectRef
from flamepy.runner.types import BatchSlot, RunnerRequest


class Local:
    def __init__(self, x: int) -> None:
        self.x = x


def test_plain_values_use_the_standard_pickle() -> None:
    value = {"a": [1, 2.5, (3, "x", b"y")], 4: {None, True}, "c": frozenset({1j})}
    assert is_plain(value)
    assert dumps(value) == pickle.dumps(value, protocol=cloudpickle.DEFAULT_PROTOCOL)
    assert cloudpickle.loads(dumps(value)) == value


def test_wire_classes_are_plain_when_their_fields_are() -> None:
    ref = ObjectRef("grpc://127.0.0.1:1", "app/ssn/id", 3)
    request = RunnerRequest(method="add", args=(ref, BatchSlot(0), 5), kwargs={"k": [ref]})
    assert is_plain(request)
    loaded = pickle.loads(dumps(request))
    assert loaded == request and isinstance(loaded.args[1], BatchSlot)
    assert not is_plain(RunnerRequest(method=None, args=(Local(1),)))


def test_anything_else_goes_through_cloudpickle() -> None:
    def square(x: int) -> int:
        return x * x

    for value in (square, [Local(2)], {"f": square}, object()):
        assert not is_plain(value)
    assert cloudpickle.loads(dumps([square]))[0](7) == 49


def test_big_or_deep_values_are_not_scanned_forever() -> None:
    big = list(range(MAX_ITEMS + 1))
    assert not is_plain(big)
    assert pickle.loads(dumps(big)) == big
    deep: list[object] = []
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    assert not is_plain(deep)
    assert pickle.loads(dumps(deep)) == deep
