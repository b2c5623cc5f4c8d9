"""Group 5 (in part): a service written against Flame SDK 0.6's service-author
names (``flamepy.FlameService``, ``flamepy.run``, ``context.common_data()``), served
by our flmrun on the local cluster, driven by the peer's own client.  The other
group-5 tests, ``flamepy.service`` both ways, are in
``packages/flamepy/tests/test_service.py`` (run by ``nox -s conformance`` too)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import ScenarioRunner, unique

from flame_testkit import ClusterThread
from flamepy import Connection

SERVICE_06 = """
import flamepy
from flamepy import FlameService, SessionContext, TaskContext


class Echo(FlameService):
    def on_session_enter(self, context: SessionContext):
        self.common = context.common_data()
        self.session = context.session_id

    def on_task_invoke(self, context: TaskContext):
        if context.input == b"fail":
            raise ValueError("asked to fail")
        return b"|".join([self.common, self.session.encode(), context.task_id.encode(),
                          context.input])

    def on_session_leave(self):
        pass


if __name__ == "__main__":
    flamepy.run(Echo())
"""


def test_peer_client_drives_a_06_service_on_our_flmrun(
    run_peer: ScenarioRunner, cluster: ClusterThread, tmp_path: Path
) -> None:
    script = tmp_path / "echo06.py"
    script.write_text(SERVICE_06)
    app = unique("svc06")
    with Connection.connect(cluster.endpoint) as conn:
        conn.register_application(app, {"command": sys.executable, "arguments": [str(script)]})
        try:
            seen = run_peer("service06_client.py", data={"application": app, "common_data": "6364"})
        finally:
            conn.unregister_application(app)
    common, sid, task_id, data = bytes.fromhex(seen["hello"]).split(b"|")
    assert (common, sid.decode(), task_id, data) == (b"cd", seen["session"], b"1", b"hello")
    # The hook's exception fails the task; the peer's invoke raises FlameError with
    # the Failed code (its message is generic: WatchTask carries no events, T1).
    assert seen["failed"]["ok"] is False
    assert seen["failed"]["error"]["type"] == "FlameError"
    assert seen["failed"]["error"]["code"] == 3
