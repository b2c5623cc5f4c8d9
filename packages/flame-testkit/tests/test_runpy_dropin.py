"""``python -m flamepy.runner.runpy``, the command of a real cluster's flmrun
application (flame-server-semantics.md A5), runs our flmrun."""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from flame_testkit import ClusterThread
from flamepy import Runner
from flamepy.proto import frontend_pb2 as fe
from flamepy.proto import frontend_pb2_grpc, types_pb2

USERLIB = """
import sys


def whoami(x):
    return sys.argv[0], x * 2


class Boom(Exception):
    pass


def boom():
    raise Boom("typed")
"""


def test_the_stock_flmrun_command_runs_our_flmrun(
    flame_env: ClusterThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor manager launches ``python -m flamepy.runner.runpy`` under the launch
    contract, and it serves a Runner request with flmrun's features."""
    stock = f"stock-flmrun-{uuid.uuid4().hex[:6]}"
    spec = types_pb2.ApplicationSpec(
        description="flmrun as a real cluster registers it, without uv",
        command=sys.executable,
        arguments=["-m", "flamepy.runner.runpy"],
        installer="python",
    )
    spec.schema.SetInParent()
    with grpc.insecure_channel(flame_env.endpoint) as channel:
        stub = frontend_pb2_grpc.FrontendStub(channel)  # type: ignore[no-untyped-call]
        request = fe.RegisterApplicationRequest(name=stock, application=spec)
        assert stub.RegisterApplication(request, timeout=10).return_code == 0
        name = f"userlib_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(USERLIB)
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        userlib = importlib.import_module(name)
        try:
            with Runner(f"dropin-{uuid.uuid4().hex[:6]}", template=stock) as rr:
                argv0, doubled = rr.service(userlib.whoami)(21).get(60)
                assert argv0.endswith("flamepy/runner/runpy.py") and doubled == 42
                with pytest.raises(userlib.Boom, match="typed"):  # flmrun's typed exceptions
                    rr.service(userlib.boom)().get(60)
        finally:
            sys.modules.pop(name, None)
            request = fe.UnregisterApplicationRequest(name=stock)
            assert stub.UnregisterApplication(request, timeout=10).return_code == 0


def test_without_flmrun_it_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['flmrun'] = None; sys.modules['flmrun.__main__'] = None; "
        "import runpy; runpy.run_module('flamepy.runner.runpy', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "'flmrun' package, which is not installed" in proc.stderr
    assert "pip install flmrun-0.1.0-py3-none-any.whl" in proc.stderr
