"""Group 3: Flame's own Runner (flamepy 0.6.0) against our flmrun.

The peer Runner uses its default template, ``flmrun``, which our local cluster
registers as ``<workspace python> -m flmrun`` with the ``python`` installer.  Each
scenario runs with a project directory holding only ``peer/runner_snippet.py`` as
its cwd, since the peer Runner packages its working directory.

The module's cluster has **one** instance slot.  The peer Runner autoscales a class
service (``RunnerContext(Counter)``: autoscale True, min 0, max unlimited), so on a
node with room for two instances the calls of ``rr.service(Counter)`` spread over two
processes, each with its own ``Counter()``, and the snippet's second result is 1 or
4 depending on timing (the same would happen on a real cluster; our own Runner runs a
class on one instance).  One slot makes the snippet deterministic;
``test_peer_class_service_spreads_over_instances`` shows the spread on two slots.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PEER_DIR, PEER_HOST, ScenarioRunner, isolated_cluster, unique

from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy.core.cache import ObjectRef
from flamepy.runner.types import RunnerContext, RunnerRequest

FAILED = 3


@pytest.fixture(scope="module")
def cluster_config() -> LocalClusterConfig:
    return LocalClusterConfig(delay_release=2, capacity=1, host=PEER_HOST, no_auth=True)


@pytest.fixture(scope="module")
def wide_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterThread]:
    """A cluster with room for two instances at once."""
    config = LocalClusterConfig(delay_release=2, capacity=2, host=PEER_HOST, no_auth=True)
    with isolated_cluster(config, tmp_path_factory.mktemp("wide-home")) as thread:
        yield thread


def test_peer_runner_runs_the_snippet_on_our_flmrun(
    run_peer: ScenarioRunner, tmp_path: Path
) -> None:
    seen = run_peer("runner_snippet.py", unique("peer-on-ours"), project=tmp_path / "project")
    assert seen["snippet"] == [3, 4, 14, 28]


def test_peer_runner_other_wire_paths_on_our_flmrun(
    run_peer: ScenarioRunner, tmp_path: Path
) -> None:
    name = unique("peer-on-ours")
    seen = run_peer("runner_snippet.py", name, "--extras", project=tmp_path / "project")
    assert seen["snippet"] == [3, 4, 14, 28]
    extras = seen["extras"]
    # Known peer bug: WatchTask has no events, so the peer Runner cannot show the text.
    assert extras["failure"] == {
        "type": "FlameError",
        "message": "Task failed without error message (code: 3)",
    }
    # Deviation pinned: our flmrun's Failed event reads "<type>: <message>" and the
    # traceback (the real runpy sends str(exc) only), and the output carries FLME +
    # the pickled exception for our Runner (the peer ignores the output of a failure).
    (failed,) = extras["failed_tasks"]
    (event,) = [e for e in failed["events"] if e["code"] == FAILED]
    assert event["message"].startswith("ValueError: boom 7\nTraceback (most recent call last):")
    assert bytes.fromhex(failed["output_prefix"]) == b"FLME"
    # Top-level futures (as keyword values too) arrive as ObjectRefs and are resolved.
    assert extras["keyword_future"] == 42
    # An ObjectRef from Runner.put_object carries a bson.int64.Int64 version (the
    # PutResult's int64), so the request pickle names pymongo's class; our flmrun must
    # load it without pymongo installed.
    assert extras["shared_ref_version_type"] == "Int64"
    assert extras["shared_ref"] == 101
    # Without the inline offer (an attribute only our Runner adds) results go to the
    # cache: the output is a BSON ObjectRef to <app>/<session>/<id>, version 1.
    assert extras["result_ref"]["key"].startswith(f"{name}/")
    assert extras["result_ref"]["version"] == 1
    # State of an object instance is written back to its context in the cache, where
    # the peer finds its own RunnerContext class with the updated object.
    assert extras["object_count"] == 7
    stored = [c for c in extras["stored_contexts"] if c["stateful"]]
    assert sorted(c["count"] for c in stored) == [7, 28]
    assert {c["class"] for c in extras["stored_contexts"]} == {"flamepy.runner.types.RunnerContext"}
    assert all(c["key_prefix"].startswith(f"{name}/") for c in extras["stored_contexts"])


def test_peer_class_service_spreads_over_instances(
    peer_python: str, wide_cluster: ClusterThread, tmp_path: Path
) -> None:
    """Why the module runs on one slot: two calls of one peer class service that wait
    for each other run in two instance processes at once (autoscale), so a class holds
    no shared state."""
    home = tmp_path / "home"
    home.mkdir()
    run = ScenarioRunner(
        peer_python, PEER_DIR, home, wide_cluster.endpoint, wide_cluster.cache_endpoint, True
    )
    seen = run("runner_snippet.py", unique("peer-spread"), "--instances", project=tmp_path / "p")
    first, second = seen["pids"]
    assert first != second


def test_peer_pickled_wire_types_are_ours(run_peer: ScenarioRunner) -> None:
    """What the peer Runner pickles loads as our own wire classes (flmrun's isinstance)."""
    peer = run_peer("pickles.py", data={"ours": {}})["peer_pickles"]
    loaded = {label: pickle.loads(bytes.fromhex(data)) for label, data in peer.items()}
    ref = ObjectRef("grpc://127.0.0.1:9090", "app/ssn/obj", 2)

    request = loaded["request"]
    assert type(request) is RunnerRequest
    assert (request.method, request.args, request.kwargs) == ("add", (ref, 5), {"k": ref})
    assert request.args is not None and type(request.args[0]) is ObjectRef
    assert type(loaded["ref"]) is ObjectRef
    assert loaded["ref"] == ref
    flags = ("stateful", "autoscale", "warmup", "min_instances", "max_instances")
    expected = {
        "context_function": (False, True, 0, 0, None),
        "context_class": (False, True, 0, 0, None),  # the peer autoscales a class
        "context_object": (True, False, 0, 1, 1),
    }
    for label, values in expected.items():
        context = loaded[label]
        assert type(context) is RunnerContext, label
        assert tuple(getattr(context, f) for f in flags) == values, label
    assert loaded["context_function"].execution_object(21) == 42
    assert loaded["context_object"].execution_object.count == 3
