"""Group 2: our Runner (workspace flamepy) against Flame's own runpy (flamepy 0.6.0).

A template application ``peer-flmrun`` runs ``<peer python> -m flamepy.runner.runpy``
with the ``python`` installer.  Our executor manager installs the Runner's package
(no dependencies, so nothing lands in ``deps``) and launches the peer runpy with
``PYTHONPATH=deps:src``: it imports its *own* flamepy from the peer venv.  Our Runner
then runs in a separate workspace-python process whose cwd is a project directory
holding only ``ours/runner_snippet.py``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from conftest import ScenarioRunner, unique

import flamepy
from flame_testkit import ClusterThread
from flamepy import ApplicationAttributes
from flamepy.core.cache import ObjectRef
from flamepy.runner._calls import INLINE_RESULT_LIMIT, pickle_request
from flamepy.runner._pickling import pickle_context
from flamepy.runner.types import CLIENT_PYTHON, INLINE_ATTRIBUTE, PYTHON_ATTRIBUTE, RunnerContext

PEER_TEMPLATE = "peer-flmrun"


@pytest.fixture(scope="module")
def peer_template(cluster: ClusterThread, peer_python: str) -> str:
    """Register the template whose instances are the peer's ``flamepy.runner.runpy``."""
    conn = flamepy.connect(cluster.endpoint)
    try:
        conn.register_application(
            PEER_TEMPLATE,
            ApplicationAttributes(
                description="Flame's own runpy (flamepy 0.6.0), for conformance tests",
                command=peer_python,
                arguments=["-m", "flamepy.runner.runpy"],
                installer="python",
                delay_release=2,
            ),
        )
    finally:
        conn.close()
    return PEER_TEMPLATE


def double(x: int) -> int:
    return 2 * x


class Tally:
    def __init__(self) -> None:
        self.count = 3


@pytest.fixture
def by_value() -> Iterator[None]:
    """Pickle this module's functions and classes by value, as code from ``__main__`` is."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def _dumps(obj: Any) -> str:
    return cloudpickle.dumps(obj, protocol=cloudpickle.DEFAULT_PROTOCOL).hex()  # type: ignore[no-any-return]


def _context(context: RunnerContext) -> str:
    return pickle_context(context, context.execution_object).hex()


def test_our_pickled_wire_types_are_the_peers_classes(
    run_peer: ScenarioRunner, by_value: None
) -> None:
    """runpy checks isinstance against its own RunnerRequest / RunnerContext / ObjectRef:
    what our Runner pickles must load as exactly those classes."""
    ref = ObjectRef("grpc://127.0.0.1:9090", "app/ssn/obj", 1)
    _, request, _ = pickle_request("add", (ref, 5), {"k": ref})
    ours = {
        "request": request.hex(),  # the exact TaskSpec.input our Runner sends
        # as the Runner sends them: marked with the client's Python (issue 21)
        "context_function": _context(RunnerContext(double)),
        "context_class": _context(RunnerContext(Tally, autoscale=False)),
        "context_object": _context(RunnerContext(Tally())),
        "ref": _dumps(ref),
    }
    seen = run_peer("pickles.py", data={"ours": ours})["loaded"]

    wire_ref = {"ObjectRef": ["grpc://127.0.0.1:9090", "app/ssn/obj", 1]}
    assert seen["request"] == {
        "class": "flamepy.runner.types.RunnerRequest",
        "isinstance": ["RunnerRequest"],
        "attributes": {
            "method": "add",
            "args": [wire_ref, 5],
            "kwargs": {"k": wire_ref},
            INLINE_ATTRIBUTE: INLINE_RESULT_LIMIT,  # our extras; the peer runpy ignores them
            PYTHON_ATTRIBUTE: CLIENT_PYTHON,
        },
    }
    assert seen["ref"]["class"] == "flamepy.core.cache.ObjectRef"
    assert seen["ref"]["isinstance"] == ["ObjectRef"]
    assert seen["ref"]["attributes"] == {
        "endpoint": wire_ref["ObjectRef"][0],
        "key": "app/ssn/obj",
        "version": 1,
    }
    flags = ("stateful", "autoscale", "warmup", "min_instances", "max_instances")
    expected = {
        "context_function": (False, True, 0, 0, None),
        # A class on one instance is stateful: its object is kept in the cache (issue 18).
        "context_class": (True, False, 0, 1, 1),
        "context_object": (True, False, 0, 1, 1),
    }
    for label, values in expected.items():
        assert seen[label]["class"] == "flamepy.runner.types.RunnerContext", label
        assert seen[label]["isinstance"] == ["RunnerContext"], label
        attributes = seen[label]["attributes"]
        assert set(attributes) == {"execution_object", PYTHON_ATTRIBUTE, *flags}, label
        assert attributes[PYTHON_ATTRIBUTE] == CLIENT_PYTHON, label
        assert tuple(attributes[f] for f in flags) == values, label


def test_our_runner_runs_the_snippet_on_the_peer_runpy(
    run_ours: ScenarioRunner, peer_template: str, tmp_path: Path
) -> None:
    seen = run_ours(
        "runner_snippet.py", unique("ours-on-peer"), peer_template, project=tmp_path / "project"
    )
    assert seen["snippet"] == [3, 4, 14, 28]


def test_our_runner_other_wire_paths_on_the_peer_runpy(
    run_ours: ScenarioRunner, peer_template: str, tmp_path: Path, cluster: ClusterThread
) -> None:
    name = unique("ours-on-peer")
    seen = run_ours(
        "runner_snippet.py", name, peer_template, "--extras", project=tmp_path / "project"
    )
    assert seen["snippet"] == [3, 4, 14, 28]
    extras = seen["extras"]
    # The peer runpy reports str(exc) only and no output: our Runner fetches the Failed
    # event with GetTask and raises TaskFailedError with that text (our flmrun would
    # re-raise the ValueError itself).  This also proves the peer runpy served the call.
    assert extras["failure"] == {
        "type": "flamepy._errors.TaskFailedError",
        "message": "boom 7",
        "is_value_error": False,
    }
    # Arguments over 1 MiB travel as top-level ObjectRefs, which the peer resolves.
    assert extras["large_bytes"] == ["bytes", 2 * 1024 * 1024]
    assert extras["large_array"] == float(2 * 1024 * 1024 // 8 + 1)
    # A future as a keyword value and a plain ObjectRef (Runner.put_object): top level.
    assert extras["keyword_future"] == 42
    assert extras["shared_ref"] == 101
    # Results are always stored in the cache by the peer under <app>/<session>.
    assert re.match(rf"{name}-[0-9a-f]{{8}}/", extras["result_ref"]["key"])  # <app>-<suffix>/
    assert extras["result_ref"]["version"] == 1
    # Incompatibility pinned: our Runner replaces futures nested in containers by
    # ObjectRefs, but the peer runpy resolves only top-level arguments, so the callee
    # receives the peer's ObjectRef instead of the value (our flmrun resolves it).
    assert extras["nested_future"] == ["flamepy.core.cache.ObjectRef", "builtins.int"]
    # The peer answers a batch offer with one plain result: no batches, nothing lost.
    assert extras["burst"] is True
    assert extras["chain"] == 21
    assert extras["batching"] is False
