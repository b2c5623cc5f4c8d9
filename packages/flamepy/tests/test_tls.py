"""``https://`` endpoints: a TLS channel trusting the configured CA file.

The cluster is a local one served on TCP with TLS, so it also requires its token:
the tests set FLAME_ENDPOINT and FLAME_TOKEN_FILE as ``flame-local up`` prints them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flame_testkit import ClusterThread, LocalClusterConfig
from flamepy import ConfigError, Connection, ConnectionFailedError, FlameClientTls

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterThread, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(directory, "server")
    config = LocalClusterConfig(host="127.0.0.1", tls_cert=cert, tls_key=key, default_apps=True)
    with ClusterThread(config) as c:
        yield c, cert


@pytest.fixture(autouse=True)
def cluster_env(tls_cluster: tuple[ClusterThread, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, _ = tls_cluster
    for key, value in cluster.client_env({}).items():
        if key != "FLAME_CA_FILE":  # each test names its CA file itself
            monkeypatch.setenv(key, value)


RUNNER = """
import numpy as np
from flamepy import Runner
from flamepy.core import cache

def total(a):
    return float(a.sum())

with Runner("tls") as rr:
    print(rr.service(total)(np.ones(3_000_000)).get())
    ref = cache.put_object("tlsapp/s1", b"x" * 10_000_000)
    print(len(cache.get_object(ref)))
"""


def test_a_runner_works_over_tls_with_the_token(
    tls_cluster: tuple[ClusterThread, Path], tmp_path: Path
) -> None:
    """Frontend (https), cache (grpc+tls) and package download, all with the token."""
    cluster, _ = tls_cluster
    assert cluster.cache_endpoint is not None
    assert cluster.cache_endpoint.startswith("grpc+tls://127.0.0.1:")
    (tmp_path / "main.py").write_text(RUNNER)
    proc = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        env=cluster.client_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3000000.0", "10000000"]


def test_https_with_ca_file_connects(tls_cluster: tuple[ClusterThread, Path]) -> None:
    cluster, ca = tls_cluster
    assert cluster.endpoint.startswith("https://127.0.0.1:")
    with Connection.connect(cluster.endpoint, FlameClientTls(ca_file=str(ca))) as conn:
        assert "flmping" in {a.name for a in conn.list_applications()}


def test_https_with_an_untrusted_certificate_fails_clearly(
    tls_cluster: tuple[ClusterThread, Path], tmp_path: Path
) -> None:
    cluster, _ = tls_cluster
    other, _ = _self_signed(tmp_path, "other")
    with pytest.raises(ConnectionFailedError) as info:
        Connection.connect(cluster.endpoint, FlameClientTls(ca_file=str(other)))
    assert cluster.endpoint in str(info.value)


def test_missing_ca_file_is_a_config_error(tls_cluster: tuple[ClusterThread, Path]) -> None:
    cluster, _ = tls_cluster
    with pytest.raises(ConfigError, match=r"no-such-ca\.pem"):
        Connection.connect(cluster.endpoint, FlameClientTls(ca_file="/no-such-ca.pem"))
