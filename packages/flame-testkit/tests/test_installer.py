"""Tests of the executor manager's application installer (flame-config.md §4).

Packages are real archives on disk, served over file://, a real stdlib HTTP server on
127.0.0.1 and (when the testkit's object cache is available) a real Arrow Flight cache.
What an installed package provides is proven by running a fresh Python subprocess (or
the package's own executable) with the returned environment.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flame_testkit._installer import AppInstaller, merge_env
from flamepy.proto import types_pb2
from flmrun._errors import FlmrunError, InstallError, UnsafeArchiveError

GENERATED_PYPROJECT = """\
[project]
name = "demo"
version = "0.1.0"
dependencies = []

[tool.flame]
generated = true
"""


def make_tar(path: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """A .tar.gz holding ``files`` (name -> (content, mode)); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return path


def python_package(path: Path, answer: int = 42) -> Path:
    return make_tar(
        path,
        {
            "pyproject.toml": (GENERATED_PYPROJECT.encode(), 0o644),
            "demo_mod.py": (f"ANSWER = {answer}\n".encode(), 0o644),
        },
    )


def binary_package(path: Path, *, with_lib: bool) -> Path:
    files = {
        "bin/hello": (b'#!/bin/sh\necho hello from "$FLAME_APP_DIR"\n', 0o755),
        "libs/libx.so": (b"not elf", 0o644),
    }
    if with_lib:
        files["lib/liby.so"] = (b"not elf", 0o644)
    return make_tar(path, files)


def spec(installer: str | None, url: str | None) -> types_pb2.ApplicationSpec:
    s = types_pb2.ApplicationSpec(command="/bin/true")
    if installer is not None:
        s.installer = installer
    if url is not None:
        s.url = url
    return s


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_with(env: dict[str, str], args: list[str], cwd: Path) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    proc = subprocess.run(
        args,
        env=merge_env(base, env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def install(inst: AppInstaller, s: types_pb2.ApplicationSpec, app: str = "demo") -> dict[str, str]:
    return asyncio.run(inst.install(app, s))


@pytest.fixture
def installer(tmp_path: Path) -> AppInstaller:
    return AppInstaller(tmp_path / "flame", python=sys.executable)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/slow/"):
            time.sleep(1.0)
            self.path = self.path[len("/slow") :]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a fresh directory: (base URL, directory)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_Handler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- selection


def test_no_installer_means_nothing_even_with_a_url(installer: AppInstaller) -> None:
    assert install(installer, spec(None, "file:///does/not/exist.tar.gz")) == {}
    assert install(installer, spec("", "file:///does/not/exist.tar.gz")) == {}
    assert not installer.root.exists()


@pytest.mark.parametrize("kind", ["python", "binary", "Python", "BINARY"])
def test_installer_without_url_gives_nothing(installer: AppInstaller, kind: str) -> None:
    assert install(installer, spec(kind, None)) == {}
    assert install(installer, spec(kind, "")) == {}


@pytest.mark.parametrize("kind", ["conda", "pip", "wheel", "pythonx"])
def test_unknown_installer_is_an_error(installer: AppInstaller, kind: str) -> None:
    with pytest.raises(InstallError, match=rf"unknown installer '{kind}'.*'python' or 'binary'"):
        install(installer, spec(kind, "file:///x.tar.gz"))


def test_unsupported_scheme(installer: AppInstaller) -> None:
    with pytest.raises(InstallError, match="unsupported package URL scheme"):
        install(installer, spec("python", "ftp://example.com/pkg.tar.gz"))


# --------------------------------------------------------------------------- file://


def test_file_url_python_install(installer: AppInstaller, tmp_path: Path) -> None:
    archive = python_package(tmp_path / "pkgs" / "demo.tar.gz")
    env = install(installer, spec("PYTHON", archive.as_uri()))
    digest = sha256(archive)
    home = installer.root / "envs" / digest
    assert env["FLAME_PACKAGE_DIGEST"] == digest
    assert env["FLAME_PACKAGE_SRC"] == str(home / "src")
    assert env["PYTHONPATH"] == f"{home / 'deps'}{os.pathsep}{home / 'src'}"
    assert (installer.root / "packages" / digest / "src" / "demo_mod.py").is_file()
    out = run_with(env, [sys.executable, "-c", "import demo_mod; print(demo_mod.ANSWER)"], tmp_path)
    assert out == "42"
    downloads = list((installer.root / "downloads").iterdir())
    assert len(downloads) == 1
    assert [p.name for p in downloads[0].iterdir()] == ["demo.tar.gz"]  # no partial files


def test_missing_file_names_the_path(installer: AppInstaller, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "pkg.tar.gz"
    with pytest.raises(InstallError) as info:
        install(installer, spec("python", missing.as_uri()))
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)
    for d in (installer.root / "downloads").iterdir():
        assert list(d.iterdir()) == []  # the partial download was removed


def test_file_url_with_remote_host_is_refused(installer: AppInstaller) -> None:
    with pytest.raises(InstallError, match="remote host"):
        install(installer, spec("python", "file://otherhost/tmp/pkg.tar.gz"))


def test_unsafe_archive_is_refused(installer: AppInstaller, tmp_path: Path) -> None:
    evil = make_tar(tmp_path / "evil.tar.gz", {"../escape.py": (b"x = 1\n", 0o644)})
    with pytest.raises(UnsafeArchiveError) as info:
        install(installer, spec("python", evil.as_uri()))
    assert isinstance(info.value, FlmrunError)
    assert info.value.member == "../escape.py"
    assert info.value.archive == evil.as_uri()  # the URL given, not the temporary download
    assert not (installer.root / "packages" / sha256(evil) / "src").exists()
    assert not (tmp_path / "escape.py").exists()


def test_unsupported_archive_name(installer: AppInstaller, tmp_path: Path) -> None:
    odd = tmp_path / "pkg.rar"
    odd.write_bytes(b"whatever")
    with pytest.raises(UnsafeArchiveError, match="unsupported archive type"):
        install(installer, spec("binary", odd.as_uri()))


# --------------------------------------------------------------------------- binary


@pytest.mark.parametrize("with_lib", [True, False])
def test_binary_install_env(installer: AppInstaller, tmp_path: Path, with_lib: bool) -> None:
    archive = binary_package(tmp_path / "tool.tar.gz", with_lib=with_lib)
    env = install(installer, spec("binary", archive.as_uri()))
    src = installer.root / "packages" / sha256(archive) / "src"
    libs = [str(src / "libs")] + ([str(src / "lib")] if with_lib else [])
    assert env["FLAME_APP_DIR"] == str(src)
    assert env["PATH"] == f"{src / 'bin'}{os.pathsep}{src}"
    assert env["LD_LIBRARY_PATH"] == os.pathsep.join(libs)
    assert env["FLAME_PACKAGE_DIGEST"] == sha256(archive)
    assert not (installer.root / "envs").exists()  # nothing python-specific
    assert run_with(env, ["hello"], tmp_path) == f"hello from {src}"  # exec bit kept


# --------------------------------------------------------------------------- http(s)://


def test_http_url_install(
    installer: AppInstaller, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = http_root
    archive = python_package(served / "demo.tar.gz", answer=7)
    env = install(installer, spec("python", f"{base}/demo.tar.gz"))
    assert env["FLAME_PACKAGE_DIGEST"] == sha256(archive)
    out = run_with(env, [sys.executable, "-c", "import demo_mod; print(demo_mod.ANSWER)"], tmp_path)
    assert out == "7"


def test_http_404_is_an_install_error(installer: AppInstaller, http_root: tuple[str, Path]) -> None:
    base, _ = http_root
    with pytest.raises(InstallError, match="HTTP 404"):
        install(installer, spec("python", f"{base}/missing.tar.gz"))


def test_http_connection_refused_is_an_install_error(installer: AppInstaller) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InstallError, match="downloading"):
        install(installer, spec("python", f"http://127.0.0.1:{port}/p.tar.gz"))


def test_event_loop_stays_free_during_a_slow_download(
    installer: AppInstaller, http_root: tuple[str, Path]
) -> None:
    base, served = http_root
    python_package(served / "demo.tar.gz")

    async def main() -> tuple[int, dict[str, str]]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.05)

        task = asyncio.create_task(ticker())
        env = await installer.install("demo", spec("python", f"{base}/slow/demo.tar.gz"))
        done.set()
        await task
        return ticks, env

    ticks, env = asyncio.run(main())
    assert "FLAME_PACKAGE_DIGEST" in env
    assert ticks >= 10  # the 1 s server delay did not block the loop


# --------------------------------------------------------------------------- caching


def test_install_is_keyed_by_content_not_url(
    installer: AppInstaller, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = http_root
    archive = python_package(tmp_path / "a" / "demo.tar.gz")
    shutil.copy(archive, served / "other-name.tar.gz")
    env_file = install(installer, spec("python", archive.as_uri()))
    env_http = install(installer, spec("python", f"{base}/other-name.tar.gz"))
    assert env_file == env_http
    digest = sha256(archive)
    assert [p.name for p in (installer.root / "packages").iterdir()] == [digest]
    assert [p.name for p in (installer.root / "envs").iterdir()] == [digest]
    assert len(list((installer.root / "downloads").iterdir())) == 2  # one per URL
    log = (installer.root / "envs" / digest / "install.log").read_text()
    assert log.count("=== ") == 1  # installed once

    # Same URL, new content: a new digest and a new install; the old one stays.
    python_package(archive, answer=99)
    env_new = install(installer, spec("python", archive.as_uri()))
    assert env_new["FLAME_PACKAGE_DIGEST"] == sha256(archive) != digest
    out = run_with(
        env_new, [sys.executable, "-c", "import demo_mod; print(demo_mod.ANSWER)"], tmp_path
    )
    assert out == "99"
    assert {p.name for p in (installer.root / "envs").iterdir()} == {digest, sha256(archive)}


def test_concurrent_installs_share_one_install(
    installer: AppInstaller, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = http_root
    archive = python_package(served / "demo.tar.gz")
    shutil.copy(archive, tmp_path / "copy.tar.gz")
    urls = [f"{base}/slow/demo.tar.gz"] * 3 + [
        f"{base}/demo.tar.gz",
        (tmp_path / "copy.tar.gz").as_uri(),
    ]

    async def main() -> list[dict[str, str]]:
        return list(
            await asyncio.gather(*(installer.install("demo", spec("python", u)) for u in urls))
        )

    envs = asyncio.run(main())
    assert all(env == envs[0] for env in envs)
    digest = sha256(archive)
    log = (installer.root / "envs" / digest / "install.log").read_text()
    assert log.count("=== ") == 1
    assert [p.name for p in (installer.root / "packages").iterdir()] == [digest]


def test_merge_env_prepends_path_like_variables() -> None:
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/a", "HOME": "/root", "LD_LIBRARY_PATH": ""}
    extra = {"PATH": "/p/bin", "PYTHONPATH": "/d:/s", "LD_LIBRARY_PATH": "/l", "HOME": "/h"}
    assert merge_env(base, extra) == {
        "PATH": f"/p/bin{os.pathsep}/usr/bin",
        "PYTHONPATH": f"/d:/s{os.pathsep}/a",
        "LD_LIBRARY_PATH": "/l",
        "HOME": "/h",
    }


# --------------------------------------------------------------------------- grpc(s)://


def _upload(endpoint: str, key: str, payload: bytes, *, tls_roots: bytes | None = None) -> None:
    import pyarrow as pa
    import pyarrow.flight as flight

    schema = pa.schema([("version", pa.uint64()), ("data", pa.binary())])
    client = flight.FlightClient(endpoint, tls_root_certs=tls_roots)
    try:
        writer, reader = client.do_put(flight.FlightDescriptor.for_path(key), schema)
        chunk = 1024 * 1024
        for start in range(0, max(len(payload), 1), chunk):
            part = payload[start : start + chunk]
            writer.write_batch(
                pa.record_batch([pa.array([0], pa.uint64()), pa.array([part])], schema=schema)
            )
        writer.done_writing()
        reader.read()
        writer.close()
    finally:
        client.close()


def _patch(endpoint: str, key: str, payload: bytes) -> None:
    import pyarrow as pa
    import pyarrow.flight as flight

    schema = pa.schema([("version", pa.uint64()), ("data", pa.binary())])
    client = flight.FlightClient(endpoint)
    try:
        descriptor = flight.FlightDescriptor.for_command(b"PATCH:" + key.encode())
        writer, reader = client.do_put(descriptor, schema)
        writer.write_batch(
            pa.record_batch([pa.array([0], pa.uint64()), pa.array([payload])], schema=schema)
        )
        writer.done_writing()
        reader.read()
        writer.close()
    finally:
        client.close()


@pytest.fixture
def cache() -> Iterator[object]:
    module = pytest.importorskip("flame_testkit._cache_server")
    server = module.CacheServer(port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_grpc_url_downloads_from_the_object_cache(
    installer: AppInstaller, cache: object, tmp_path: Path
) -> None:
    port = cache.port  # type: ignore[attr-defined]
    files = {
        "pyproject.toml": (GENERATED_PYPROJECT.encode(), 0o644),
        "demo_mod.py": (b"ANSWER = 5\n", 0o644),
        "blob.bin": (os.urandom(5 * 1024 * 1024), 0o644),  # > gRPC's default 4 MiB message
    }
    archive = make_tar(tmp_path / "x.tar.gz", files)
    _upload(f"grpc://127.0.0.1:{port}", "app/pkg/x.tar.gz", archive.read_bytes())
    env = install(installer, spec("python", f"grpc://127.0.0.1:{port}/app/pkg/x.tar.gz"))
    assert env["FLAME_PACKAGE_DIGEST"] == sha256(archive)
    out = run_with(env, [sys.executable, "-c", "import demo_mod; print(demo_mod.ANSWER)"], tmp_path)
    assert out == "5"
    src = installer.root / "packages" / sha256(archive) / "src"
    assert (src / "blob.bin").read_bytes() == files["blob.bin"][0]


def test_grpc_missing_key_is_an_install_error(installer: AppInstaller, cache: object) -> None:
    port = cache.port  # type: ignore[attr-defined]
    with pytest.raises(InstallError, match=r"object cache.*app/pkg/none\.tar\.gz"):
        install(installer, spec("python", f"grpc://127.0.0.1:{port}/app/pkg/none.tar.gz"))


def test_grpc_object_with_a_patch_is_refused(
    installer: AppInstaller, cache: object, tmp_path: Path
) -> None:
    port = cache.port  # type: ignore[attr-defined]
    endpoint = f"grpc://127.0.0.1:{port}"
    archive = python_package(tmp_path / "p.tar.gz")
    _upload(endpoint, "app/pkg/p.tar.gz", archive.read_bytes())
    _patch(endpoint, "app/pkg/p.tar.gz", b"more")
    with pytest.raises(InstallError, match="patches"):
        install(installer, spec("python", f"{endpoint}/app/pkg/p.tar.gz"))


def test_grpc_url_without_key_is_an_error(installer: AppInstaller) -> None:
    with pytest.raises(InstallError, match="needs a host and a cache key"):
        install(installer, spec("python", "grpc://127.0.0.1:9/"))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_grpcs_url_uses_tls_with_the_ca_file(tmp_path: Path) -> None:
    module = pytest.importorskip("flame_testkit._cache_server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = module.CacheServer(port=0, tls=(cert.read_bytes(), key.read_bytes()))
    server.start()
    try:
        archive = binary_package(tmp_path / "b.tar.gz", with_lib=False)
        _upload(
            server.endpoint, "app/pkg/b.tar.gz", archive.read_bytes(), tls_roots=cert.read_bytes()
        )
        url = f"grpcs://127.0.0.1:{server.port}/app/pkg/b.tar.gz"
        trusted = AppInstaller(tmp_path / "flame", cache_ca_file=str(cert))
        env = install(trusted, spec("binary", url))
        assert env["FLAME_PACKAGE_DIGEST"] == sha256(archive)
        untrusted = AppInstaller(tmp_path / "flame2")  # system roots only
        with pytest.raises(InstallError, match="object cache"):
            install(untrusted, spec("binary", url))
    finally:
        server.stop()
