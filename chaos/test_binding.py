"""Case 3 (the slot part): closing a session whose instance is still being set up
(here: its package downloads from a server that sends one byte a second) frees
the slot at once; before, the executors stayed Binding until the download ended."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy import Connection, SessionAttributes


@pytest.fixture
def trickle() -> Iterator[str]:
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            while not stop.is_set():
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                stop.wait(1.0)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pkg.tar.gz"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_case3_closing_a_session_frees_a_binding_slot(trickle: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = LocalClusterConfig(capacity=1, work_dir=tmp_path / "work", test_app=True)
    with ClusterThread(config) as cluster, Connection.connect(cluster.endpoint) as conn:
        conn.register_application(
            "slow", {"command": "/bin/true", "url": trickle, "installer": "python"}
        )
        session = conn.create_session(SessionAttributes(application="slow"))
        session.create_task(b"x")
        deadline = time.monotonic() + 20
        while not conn.list_executors():
            assert time.monotonic() < deadline, "no executor started"
            time.sleep(0.05)
        conn.close_session(session.id)
        started = time.monotonic()
        while conn.list_executors():
            assert time.monotonic() - started < 5, "the binding executor kept its slot"
            time.sleep(0.05)
        # The slot serves another session at once.
        other = conn.create_session(SessionAttributes(application="flmtest"))
        assert other.invoke(b"pid", timeout=60)
        conn.close_session(other.id)
