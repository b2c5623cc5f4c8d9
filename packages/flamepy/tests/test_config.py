"""Tests of the client configuration module ``flamepy._config``."""

from __future__ import annotations

import dataclasses
import logging
import textwrap
from pathlib import Path

import pytest

from flamepy._config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FLAME_CACHE_ENDPOINT,
    DEFAULT_FLAME_ENDPOINT,
    DEFAULT_PACKAGE_EXCLUDES,
    DEFAULT_RUNNER_TEMPLATE,
    FlameCacheConfig,
    FlameClientTls,
    FlameClusterConfig,
    FlameContext,
    FlameContextRunner,
    FlamePackage,
    parse_endpoint,
)
from flamepy._errors import ConfigError, FlameErrorCode

CURRENT = """
current-context: prod
contexts:
  - name: dev
    cluster:
      endpoint: http://dev:8080
  - name: prod
    cluster:
      endpoint: https://flame.example.com:8443
      tls:
        ca_file: /etc/flame/ca.pem
    cache:
      endpoint: grpcs://cache.example.com:9443
      tls:
        ca_file: /etc/flame/cache-ca.pem
      storage: /var/cache/flame
    package:
      storage: file:///srv/packages
      excludes: ["*.log", "data/"]
    runner:
      template: my-runner
"""

OLDER = """
current-cluster: flame
clusters:
  - name: flame
    endpoint: "http://127.0.0.1:30080"
    cache: "grpc://127.0.0.1:30090"
    package:
      - storage: file:///opt/packages
        excludes: ["*.tmp"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flame.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> FlameContext:
    return FlameContext(path=write(tmp_path, text), environ=environ or {})


def load_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'flame.yaml'}: ")
    assert info.value.code == FlameErrorCode.INVALID_CONFIG
    return message


# --- defaults and file location ------------------------------------------------------


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ctx = FlameContext(environ={})
    assert ctx.path is None
    assert ctx.context_name is None
    assert ctx.configured_endpoint is None
    assert ctx.endpoint == DEFAULT_FLAME_ENDPOINT == "http://127.0.0.1:8080"
    assert ctx.tls is None
    assert ctx.cache == FlameCacheConfig(DEFAULT_FLAME_CACHE_ENDPOINT, None, None)
    assert ctx.cache_endpoint == "grpc://127.0.0.1:9090"
    assert ctx.cache_tls is None
    assert ctx.package is None
    assert ctx.runner == FlameContextRunner(template=DEFAULT_RUNNER_TEMPLATE)
    assert ctx.runner.template == "flmrun"
    assert ctx.connect_timeout == DEFAULT_CONNECT_TIMEOUT == 10.0


def test_default_file_under_home_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FLAME_CONFIG", raising=False)
    (tmp_path / ".flame").mkdir()
    (tmp_path / ".flame" / "flame.yaml").write_text(CURRENT, encoding="utf-8")
    ctx = FlameContext(environ={})
    assert ctx.path == tmp_path / ".flame" / "flame.yaml"
    assert ctx.context_name == "prod"


def test_flame_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    monkeypatch.setenv("FLAME_CONFIG", str(write(tmp_path, OLDER)))
    ctx = FlameContext()
    assert ctx.path == tmp_path / "flame.yaml"
    assert ctx.context_name == "flame"


def test_flame_config_pointing_at_missing_file_fails(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="FLAME_CONFIG") as info:
        FlameContext(environ={"FLAME_CONFIG": str(missing)})
    assert str(missing) in str(info.value)


def test_empty_file_is_treated_like_no_file(tmp_path: Path) -> None:
    ctx = load(tmp_path, "# only a comment\n")
    assert ctx.context_name is None
    assert ctx.configured_endpoint is None
    assert ctx.cache_endpoint == DEFAULT_FLAME_CACHE_ENDPOINT


# --- the two generations ---------------------------------------------------------------


def test_current_generation_selects_named_context(tmp_path: Path) -> None:
    ctx = load(tmp_path, CURRENT)
    assert ctx.context_name == "prod"
    assert ctx.configured_endpoint == ctx.endpoint == "https://flame.example.com:8443"
    assert ctx.cluster == FlameClusterConfig(
        "https://flame.example.com:8443", FlameClientTls("/etc/flame/ca.pem")
    )
    assert ctx.tls == FlameClientTls(ca_file="/etc/flame/ca.pem")
    assert ctx.cache == FlameCacheConfig(
        "grpcs://cache.example.com:9443",
        FlameClientTls("/etc/flame/cache-ca.pem"),
        "/var/cache/flame",
    )
    assert ctx.package == FlamePackage(
        "file:///srv/packages", [*DEFAULT_PACKAGE_EXCLUDES, "*.log", "data/"]
    )
    assert ctx.runner.template == "my-runner"


def test_older_generation_with_package_as_list(tmp_path: Path) -> None:
    ctx = load(tmp_path, OLDER)
    assert ctx.context_name == "flame"
    assert ctx.endpoint == "http://127.0.0.1:30080"
    assert ctx.cache_endpoint == "grpc://127.0.0.1:30090"
    assert ctx.tls is None
    assert ctx.package == FlamePackage("file:///opt/packages", [*DEFAULT_PACKAGE_EXCLUDES, "*.tmp"])
    assert ctx.runner.template == "flmrun"


def test_older_generation_with_package_as_mapping(tmp_path: Path) -> None:
    ctx = load(
        tmp_path,
        """
        current-cluster: c
        clusters:
          - name: c
            endpoint: http://h:8080
            package:
              storage: file:///p
        """,
    )
    assert ctx.package == FlamePackage("file:///p")
    assert ctx.package.excludes == DEFAULT_PACKAGE_EXCLUDES  # 0.6's defaults


def test_older_http_cache_url_becomes_grpc_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = "current-cluster: c\nclusters:\n  - name: c\n    cache: http://10.0.0.5:9090\n"
    with caplog.at_level(logging.WARNING, logger="flamepy.config"):
        ctx = load(tmp_path, text)
    assert ctx.cache_endpoint == "grpc://10.0.0.5:9090"
    assert any("http://10.0.0.5:9090" in r.getMessage() for r in caplog.records)


def test_endpoint_without_scheme_gets_http(tmp_path: Path) -> None:
    ctx = load(
        tmp_path, "current-context: a\ncontexts:\n  - name: a\n    cluster: {endpoint: h:1}\n"
    )
    assert ctx.endpoint == "http://h:1"


def test_excludes_are_kept_without_storage(tmp_path: Path) -> None:
    text = "current-context: a\ncontexts:\n  - name: a\n    package:\n      excludes: [big/]\n"
    ctx = load(tmp_path, text)
    assert ctx.package == FlamePackage(None, [*DEFAULT_PACKAGE_EXCLUDES, "big/"])
    assert ctx.package.all_excludes == (*DEFAULT_PACKAGE_EXCLUDES, "big/")


# --- environment overrides -------------------------------------------------------------


def test_env_overrides_endpoints_and_storage(tmp_path: Path) -> None:
    ctx = load(
        tmp_path,
        CURRENT,
        {
            "FLAME_ENDPOINT": "http://other:9000",
            "FLAME_CACHE_ENDPOINT": "grpc://othercache:9999",
            "FLAME_CACHE_STORAGE": "/tmp/store",
        },
    )
    assert ctx.configured_endpoint == "http://other:9000"
    assert ctx.cache_endpoint == "grpc://othercache:9999"
    assert ctx.cache.storage == "/tmp/store"
    assert ctx.cache_tls == FlameClientTls("/etc/flame/cache-ca.pem")


def test_env_works_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ctx = FlameContext(
        environ={
            "FLAME_CONFIG": "",
            "FLAME_ENDPOINT": "https://[::1]:8443",
            "FLAME_CACHE_ENDPOINT": "grpc://127.0.0.1:1234",
        },
    )
    assert ctx.path is None
    assert ctx.configured_endpoint == "https://[::1]:8443"
    assert ctx.cache == FlameCacheConfig("grpc://127.0.0.1:1234", None, None)


def test_ca_file_env_fills_but_does_not_override(tmp_path: Path) -> None:
    text = """
    current-context: a
    contexts:
      - name: a
        cluster:
          endpoint: https://h:8443
          tls: {ca_file: /from/file.pem}
        cache:
          endpoint: grpcs://h:9443
    """
    ctx = load(tmp_path, text, {"FLAME_CA_FILE": "/from/env.pem"})
    assert ctx.tls == FlameClientTls("/from/file.pem")
    assert ctx.cache_tls == FlameClientTls("/from/env.pem")


def test_ca_file_env_fills_both_without_file(tmp_path: Path) -> None:
    ctx = load(tmp_path, "", {"FLAME_CA_FILE": "/ca.pem"})
    assert ctx.tls == ctx.cache_tls == FlameClientTls("/ca.pem")


def test_empty_env_values_count_as_unset(tmp_path: Path) -> None:
    env = {name: "" for name in ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT", "FLAME_CA_FILE")}
    ctx = load(tmp_path, CURRENT, {**env, "FLAME_CACHE_STORAGE": "  "})
    assert ctx.endpoint == "https://flame.example.com:8443"
    assert ctx.cache_endpoint == "grpcs://cache.example.com:9443"
    assert ctx.cache.storage == "/var/cache/flame"
    assert ctx.tls == FlameClientTls("/etc/flame/ca.pem")


def test_env_http_cache_endpoint_is_converted(tmp_path: Path) -> None:
    ctx = load(tmp_path, "", {"FLAME_CACHE_ENDPOINT": "http://10.1.1.1:9090"})
    assert ctx.cache_endpoint == "grpc://10.1.1.1:9090"


def test_invalid_env_endpoint_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment: FLAME_ENDPOINT: .*'ftp'"):
        load(tmp_path, "", {"FLAME_ENDPOINT": "ftp://h:1"})


# --- malformed files -------------------------------------------------------------------


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "current-context: a\ncontexts: [\n  - name: a\n  bad: : :\n")
    assert "invalid YAML at line " in message
    assert "fix" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = load_error(tmp_path, "- a\n- b\n")
    assert "(top level): expected a mapping, got list" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("contexts:\n  - name: a\n", "current-context"),
        ("clusters:\n  - name: a\n", "current-cluster"),
        ("unrelated: 1\n", "current-context"),
    ],
)
def test_missing_current_entry_name(tmp_path: Path, text: str, key: str) -> None:
    message = load_error(tmp_path, text)
    assert f": {key}: is not set; add '{key}: <name>'" in message


def test_current_context_not_found_lists_available(tmp_path: Path) -> None:
    message = load_error(tmp_path, CURRENT.replace("current-context: prod", "current-context: qa"))
    assert "current-context: 'qa' not found in contexts (available: 'dev', 'prod')" in message


@pytest.mark.parametrize(
    ("entry", "key", "problem"),
    [
        ("cluster: {endpoint: 8080}", "contexts[0].cluster.endpoint", "expected a string, got int"),
        ("cluster: [a]", "contexts[0].cluster", "expected a mapping, got list"),
        ("cluster: {tls: x}", "contexts[0].cluster.tls", "expected a mapping, got str"),
        ("cache: {tls: {ca_file: 1}}", "contexts[0].cache.tls.ca_file", "got int"),
        ("cache: grpc://h:1", "contexts[0].cache", "expected a mapping, got str"),
        ("cache: {storage: [x]}", "contexts[0].cache.storage", "expected a string, got list"),
        ("runner: {template: true}", "contexts[0].runner.template", "got bool"),
        ("package: [{storage: 'file:///a'}, {}]", "contexts[0].package", "got 2 elements"),
        ("package: {storage: /plain/dir}", "contexts[0].package.storage", "unsupported"),
    ],
)
def test_wrong_types_name_file_and_key(tmp_path: Path, entry: str, key: str, problem: str) -> None:
    message = load_error(tmp_path, f"current-context: a\ncontexts:\n  - name: a\n    {entry}\n")
    assert f": {key}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("current-context: a\ncontexts: {a: 1}\n", "contexts: expected a list"),
        ("current-context: a\ncontexts:\n  - cluster: {}\n", "contexts[0].name: is missing"),
        ("current-context: 3\ncontexts: []\n", "current-context: expected a string, got int"),
    ],
)
def test_malformed_entry_list(tmp_path: Path, text: str, key: str) -> None:
    assert f": {key}" in load_error(tmp_path, text)


@pytest.mark.parametrize(
    ("excludes", "key", "problem"),
    [
        ("'*.log'", "contexts[0].package.excludes", "expected a list, got str"),
        ("[a, 1]", "contexts[0].package.excludes[1]", "expected a pattern, got int"),
        ("[a, '']", "contexts[0].package.excludes[1]", "expected a pattern, got an empty string"),
    ],
)
def test_excludes_must_be_list_of_strings(
    tmp_path: Path, excludes: str, key: str, problem: str
) -> None:
    text = f"current-context: a\ncontexts:\n  - name: a\n    package: {{excludes: {excludes}}}\n"
    message = load_error(tmp_path, text)
    assert f": {key}: {problem}; write excludes as a YAML list" in message


@pytest.mark.parametrize(
    ("section", "url", "allowed"),
    [
        ("cluster", "grpc://h:8080", "https://"),
        ("cluster", "http://h:8080/api", "path"),
        ("cache", "http://h:9090", "grpcs://"),
        ("cache", "grpc://h:99999", "port"),
    ],
)
def test_unsupported_endpoint_names_key_and_value(
    tmp_path: Path, section: str, url: str, allowed: str
) -> None:
    text = f"current-context: a\ncontexts:\n  - name: a\n    {section}: {{endpoint: '{url}'}}\n"
    message = load_error(tmp_path, text)
    assert f": contexts[0].{section}.endpoint: invalid endpoint {url!r}" in message
    assert allowed in message


def test_older_generation_errors_use_older_keys(tmp_path: Path) -> None:
    message = load_error(tmp_path, "current-cluster: c\nclusters:\n  - name: c\n    cache: 9\n")
    assert ": clusters[0].cache: expected a string, got int" in message


# --- parse_endpoint and the dataclasses ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h", ("http", "h", 8080)),
        ("h:1234", ("http", "h", 1234)),
        ("https://flame.example.com", ("https", "flame.example.com", 8080)),
        ("HTTP://Host:80/", ("http", "host", 80)),
        ("[::1]:80", ("http", "::1", 80)),
        ("https://[fe80::1]", ("https", "fe80::1", 8080)),
    ],
)
def test_parse_endpoint_accepts(url: str, expected: tuple[str, str, int]) -> None:
    assert parse_endpoint(url) == expected


@pytest.mark.parametrize(
    "url", ["", "ftp://h", "http://", "http://h:x", "http://h:0", "http://[::1", "a b", "u@h:1"]
)
def test_parse_endpoint_rejects(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_endpoint(url)
    assert f"invalid endpoint {url!r}" in str(info.value)
    assert "write it as http://host:port" in str(info.value)


def test_parse_endpoint_with_other_schemes_and_port() -> None:
    schemes = ("grpc", "grpcs")
    assert parse_endpoint("cache", default_port=9090, schemes=schemes) == ("grpc", "cache", 9090)
    with pytest.raises(ConfigError, match="unsupported scheme 'http'"):
        parse_endpoint("http://cache", schemes=schemes)


def test_dataclasses_are_frozen() -> None:
    values: list[object] = [
        FlameClientTls("/a"),
        FlamePackage("file:///p", ["x"]),
        FlameContextRunner("t"),
        FlameClusterConfig("http://h", None),
        FlameCacheConfig("grpc://h:1", None, None),
    ]
    for value in values:
        field_name = dataclasses.fields(value)[0].name  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field_name, "changed")


def test_package_accepts_list_and_stores_tuple() -> None:
    package = FlamePackage("file:///p", ["a", "*.pyc"])
    assert package.excludes == ("a", "*.pyc")
    assert package == FlamePackage("file:///p", ("a", "*.pyc"))
    assert hash(package) == hash(FlamePackage("file:///p", ["a", "*.pyc"]))
    assert package.all_excludes == (*DEFAULT_PACKAGE_EXCLUDES, "a")
    # Flame 0.6's defaults when none are given.
    assert FlamePackage("file:///p").excludes == (".venv", "__pycache__", ".gitignore", "*.pyc")
    with pytest.raises(TypeError):
        FlamePackage("file:///p", "*.log")


def test_context_properties_are_read_only(tmp_path: Path) -> None:
    ctx = load(tmp_path, CURRENT)
    with pytest.raises(AttributeError):
        ctx.endpoint = "http://x"  # type: ignore[misc]


def test_an_unknown_key_is_a_warning_naming_the_nearest(tmp_path: Path) -> None:
    """Issue 19: a misspelt key does not go unnoticed."""
    import warnings

    from flamepy import ConfigWarning

    path = tmp_path / "flame.yaml"
    path.write_text(
        "current-context: c\n"
        "contexts:\n"
        "  - name: c\n"
        "    cluster: {endpont: http://h:1}\n"
        "    cahce: {endpoint: grpc://h:2}\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = FlameContext(path=path, environ={})
    texts = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    assert any("contexts[0].cluster.endpont; did you mean 'endpoint'?" in t for t in texts)
    assert any("contexts[0].cahce; did you mean 'cache'?" in t for t in texts)
    assert ctx.configured_endpoint is None  # ignored, as the warning says
