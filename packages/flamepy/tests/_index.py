"""A package index on 127.0.0.1 for tests: PEP 503 pages over wheels made here.

``flamedemo`` is a pure-Python distribution that no environment has; each
version's module says which version it is (``flamedemo.VERSION``).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def make_wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of ``name`` (a module ``name`` with ``VERSION``)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: flame-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for rel, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


class LocalIndex:
    """Serves ``/simple/<name>/`` and the wheels in ``directory``; ``served`` is the
    set of versions offered (change it to "publish" or "yank")."""

    def __init__(self, directory: Path, name: str, versions: list[str]) -> None:
        self.directory = directory
        self.name = name
        self.wheels = {v: make_wheel(directory, name, v) for v in versions}
        self.served = set(versions)
        self.requests: list[str] = []
        self.url = ""

    def page(self) -> bytes:
        links = "".join(
            f'<a href="/files/{self.wheels[v].name}">{self.wheels[v].name}</a>\n'
            for v in sorted(self.served)
        )
        return f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode()

    @contextmanager
    def running(self) -> Iterator[LocalIndex]:
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:
                index.requests.append(self.path)
                if self.path.rstrip("/") == f"/simple/{index.name}":
                    body, kind = index.page(), "text/html"
                elif self.path.startswith("/files/"):
                    found = [w for w in index.wheels.values() if w.name == self.path[7:]]
                    if not found:
                        self.send_error(404)
                        return
                    body, kind = found[0].read_bytes(), "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}/simple"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
