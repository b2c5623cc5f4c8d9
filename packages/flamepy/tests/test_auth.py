"""Unix socket endpoints and access tokens in the client's configuration."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flamepy import ConfigError, FlameContext
from flamepy._auth import token_for
from flamepy._cache.client import flight_location
from flamepy._channel import _target
from flamepy._config import parse_endpoint, unix_socket_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("unix:///tmp/flms-x/frontend.sock", "/tmp/flms-x/frontend.sock"),
        ("unix:/tmp/flms-x/frontend.sock", "/tmp/flms-x/frontend.sock"),
        ("grpc+unix:///tmp/flms-x/cache.sock", "/tmp/flms-x/cache.sock"),
        ("http://127.0.0.1:8080", None),
    ],
)
def test_unix_socket_paths(url: str, path: str | None) -> None:
    assert unix_socket_path(url) == path


@pytest.mark.parametrize("url", ["unix://relative/x.sock", "unix:", "unix:///", "unix:////x"])
def test_a_unix_endpoint_needs_an_absolute_path(url: str) -> None:
    with pytest.raises(ConfigError, match="absolute path"):
        parse_endpoint(url)


def test_unix_endpoints_from_the_environment_are_kept_as_given() -> None:
    ctx = FlameContext(
        environ={
            "FLAME_ENDPOINT": "unix:/tmp/flms-x/frontend.sock",
            "FLAME_CACHE_ENDPOINT": "grpc+unix:///tmp/flms-x/cache.sock",
        }
    )
    assert ctx.endpoint == "unix:/tmp/flms-x/frontend.sock"
    assert ctx.cache_endpoint == "grpc+unix:///tmp/flms-x/cache.sock"
    assert _target(ctx.endpoint) == ("unix:/tmp/flms-x/frontend.sock", False)
    assert flight_location(ctx.cache_endpoint) == "grpc+unix:///tmp/flms-x/cache.sock"


def test_a_cache_scheme_is_not_a_frontend_endpoint() -> None:
    with pytest.raises(ConfigError, match="unsupported scheme 'grpc\\+unix'"):
        FlameContext(environ={"FLAME_ENDPOINT": "grpc+unix:///tmp/x.sock"})


def _config(tmp_path: Path, token_file: str) -> Path:
    path = tmp_path / "flame.yaml"
    path.write_text(
        "current-context: local\n"
        "contexts:\n"
        "  - name: local\n"
        "    cluster:\n"
        "      endpoint: http://127.0.0.1:8080\n"
        f"      token_file: {token_file}\n"
        "    cache:\n"
        "      endpoint: grpc://127.0.0.1:9090\n"
    )
    return path


def _token(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_file_in_flame_yaml_is_relative_to_the_file(tmp_path: Path) -> None:
    _token(tmp_path / "tok", "  s3cret \n")
    ctx = FlameContext(path=_config(tmp_path, "tok"), environ={})
    assert ctx.cluster.token_file == str(tmp_path / "tok")
    assert ctx.token == "s3cret"


def test_token_precedence_env_value_then_env_file_then_yaml(tmp_path: Path) -> None:
    config = _config(tmp_path, str(_token(tmp_path / "yaml-tok", "from-yaml")))
    env_file = _token(tmp_path / "env-tok", "from-env-file")
    assert FlameContext(path=config, environ={}).token == "from-yaml"
    environ = {"FLAME_TOKEN_FILE": str(env_file)}
    assert FlameContext(path=config, environ=environ).token == "from-env-file"
    environ["FLAME_TOKEN"] = "from-env"
    assert FlameContext(path=config, environ=environ).token == "from-env"
    assert FlameContext(environ={}).token is None


def test_unreadable_or_empty_token_files_are_config_errors(tmp_path: Path) -> None:
    missing = FlameContext(environ={"FLAME_TOKEN_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="cannot read the access token file"):
        _ = missing.token
    empty = FlameContext(environ={"FLAME_TOKEN_FILE": str(_token(tmp_path / "e", " \n"))})
    with pytest.raises(ConfigError, match="is empty"):
        _ = empty.token


def test_a_token_file_others_can_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loose = _token(tmp_path / "loose", "t", mode=0o644)
    with caplog.at_level(logging.WARNING, logger="flamepy.auth"):
        assert FlameContext(environ={"FLAME_TOKEN_FILE": str(loose)}).token == "t"
    assert "chmod 600" in caplog.text


def test_the_token_goes_only_to_the_configured_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("FLAME_CONFIG", "FLAME_TOKEN_FILE", "FLAME_CA_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    monkeypatch.setenv("FLAME_ENDPOINT", "http://127.0.0.1:8080")
    monkeypatch.setenv("FLAME_CACHE_ENDPOINT", "grpc://127.0.0.1:9090")
    monkeypatch.setenv("FLAME_TOKEN", "tok")
    assert token_for("http://127.0.0.1:8080") == "tok"
    assert token_for("127.0.0.1:8080") == "tok"  # the same endpoint, written differently
    assert token_for("grpc://127.0.0.1:9090") == "tok"
    assert token_for("grpc+tcp://127.0.0.1:9090") == "tok"
    assert token_for("grpc://10.0.0.7:9090") is None  # an ObjectRef naming another cache
    assert token_for("grpc+tls://127.0.0.1:9090") is None  # TLS there, plaintext here
    assert token_for("http://127.0.0.1:8081") is None
    monkeypatch.delenv("FLAME_TOKEN")
    assert token_for("http://127.0.0.1:8080") is None
