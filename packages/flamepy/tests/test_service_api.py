"""The service-author API under Flame SDK 0.6's names (issue 22, item 1).

A service written as for 0.6 (``flamepy.FlameService`` plus ``flamepy.run``, the
contexts used the 0.6 way: ``context.common_data()``) runs unchanged as an
application on the testkit, launched under the executor's contract.  The names
come from flmrun; without flmrun they raise an ImportError naming the fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import flamepy
from flame_testkit import ClusterThread
from flamepy import SessionAttributes

WAIT = 60.0

SERVICE_06 = """
import flamepy
from flamepy import FlameService, SessionContext, TaskContext


class Echo(FlameService):
    def on_session_enter(self, context: SessionContext):
        assert isinstance(context, SessionContext)
        self.common = context.common_data()  # a method in 0.6
        self.session = context.session_id
        self.app = context.application.name

    def on_task_invoke(self, context: TaskContext):
        assert isinstance(context, TaskContext)
        if context.input == b"fail":
            raise ValueError("asked to fail")
        parts = [self.common or b"-", self.session.encode(), self.app.encode(),
                 context.task_id.encode(), context.session_id.encode(), context.input or b""]
        return b"|".join(parts)

    def on_session_leave(self):
        pass


if __name__ == "__main__":
    flamepy.run(Echo())
"""


def test_a_06_service_runs_unchanged_on_the_testkit(
    tmp_path: Path, flame_connection: flamepy.Connection, flame_cluster: ClusterThread
) -> None:
    script = tmp_path / "echo_service.py"
    script.write_text(SERVICE_06)
    app = f"svc06-{uuid.uuid4().hex[:6]}"
    flame_connection.register_application(
        app, {"command": sys.executable, "arguments": [str(script)]}
    )
    session = flame_connection.create_session(
        SessionAttributes(application=app, common_data=b"shared")
    )
    try:
        out = session.invoke(b"hello", timeout=WAIT)
        common, sid, name, task_id, task_sid, data = out.split(b"|")
        assert (common, sid, name, data) == (b"shared", session.id.encode(), app.encode(), b"hello")
        assert task_id == b"1" and task_sid == session.id.encode()
        with pytest.raises(flamepy.TaskFailedError, match="asked to fail"):
            session.invoke(b"fail", timeout=WAIT)
        assert session.invoke(b"again", timeout=WAIT).endswith(b"|again")
    finally:
        flame_connection.close_session(session.id)
        flame_connection.unregister_application(app)


def test_the_names_are_flmruns_and_the_module_paths_resolve() -> None:
    import flmrun
    from flamepy.core import service

    assert flamepy.FlameService is service.FlameService is flmrun.FlameService
    assert flamepy.SessionContext is flmrun.SessionContext
    assert flamepy.ApplicationContext is flmrun.ApplicationContext
    assert flamepy.TaskContext is flmrun.TaskContext
    assert flamepy.run is flmrun.run
    assert (
        flamepy.FLAME_INSTANCE_ENDPOINT
        == service.FLAME_INSTANCE_ENDPOINT
        == ("FLAME_INSTANCE_ENDPOINT")
    )
    context = flamepy.SessionContext(b"cd", "s-1", flamepy.ApplicationContext("app"))
    assert context.common_data() == b"cd"  # 0.6's shape: a method, positional fields
    informer = flamepy.TaskInformer()
    assert informer.on_update(None) is None and informer.on_error(ValueError()) is None  # type: ignore[arg-type]


def test_without_flmrun_the_names_say_what_to_install(tmp_path: Path) -> None:
    """flamepy stays a pure client: importing it loads no flmrun, and a service name
    used without flmrun raises an ImportError that names the package."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "flmrun.py").write_text("raise ModuleNotFoundError('no', name='flmrun')\n")
    code = textwrap.dedent(
        """
        import sys
        import flamepy
        assert "flmrun" not in sys.modules, "flamepy imported flmrun eagerly"
        try:
            flamepy.FlameService
        except ImportError as exc:
            print(exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (
        "pip install flmrun-0.1.0-py3-none-any.whl" in done.stdout and "FlameService" in done.stdout
    )
