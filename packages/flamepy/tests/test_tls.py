"""``https://`` endpoints: a TLS channel trusting the configured CA file."""

from __future__ import annotations

import shutil
import subprocess
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
    with ClusterThread(LocalClusterConfig(tls_cert=cert, tls_key=key, default_apps=True)) as c:
        yield c, cert


def test_https_with_ca_file_connects(tls_cluster: tuple[ClusterThread, Path]) -> None:
    cluster, ca = tls_cluster
    assert cluster.endpoint.startswith("https://127.0.0.1:")
    with Connection.connect(cluster.endpoint, FlameClientTls(ca_file=str(ca))) as conn:
        assert "flmtest" in {a.name for a in conn.list_applications()}


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
