"""``flamepy.runner.get_data`` reads a Runner task's input and output, as 0.6's
does, for the formats this SDK writes (issue 22)."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import flamepy
from flame_testkit import ClusterThread
from flamepy import Runner
from flamepy.runner import ErrorType, RunnerError, get_data

LIB = """
def scale(values, factor=1):
    return [v * factor for v in values]


def fail():
    raise KeyError("nope")
"""


@pytest.fixture
def lib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flame_env: ClusterThread
) -> Iterator[ModuleType]:
    name = f"gdlib_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(LIB)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def test_get_data_reads_a_runner_tasks_input_and_output(
    lib: ModuleType, flame_connection: flamepy.Connection
) -> None:
    with Runner(f"gd-{uuid.uuid4().hex[:6]}") as rr:
        service = rr.service(lib.scale)
        big = list(range(300_000))  # over 1 MiB pickled: it travels through the cache
        assert service([1, 2], factor=3).get(60) == [3, 6]
        assert len(service(big).get(60)) == len(big)
        with pytest.raises(KeyError):
            rr.service(lib.fail)().get(60)
        session = flame_connection.get_session(service.session_id)
        tasks = list(session.list_tasks())
        first = get_data(tasks[0].input)
        assert first["type"] == "input" and first["method"] is None
        assert first["args"] == ([1, 2],) and first["kwargs"] == {"factor": 3}
        out = get_data(tasks[0].output)
        assert out["type"] == "output"
        # flmrun answers a batch task with one result per call (FLMB), else one result.
        results = out["result"] if "batch" in out["metadata"] else [out["result"]]
        assert results == [[3, 6]]
        second = get_data(tasks[1].input)
        assert second["args"] == (big,)  # the ObjectRef argument resolved from the cache


def test_bad_data_is_a_runner_error() -> None:
    with pytest.raises(RunnerError) as info:
        get_data(b"\x00\x01 not a pickle or a ref")
    assert info.value.error_type is ErrorType.DECODE_ERROR
    assert str(info.value).startswith("[decode_error] ")
    with pytest.raises(RunnerError) as typed:
        get_data("text")  # type: ignore[arg-type]
    assert typed.value.error_type is ErrorType.DATA_FORMAT_ERROR
