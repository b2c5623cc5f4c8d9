"""Client configuration: ``~/.flame/flame.yaml`` plus ``FLAME_*`` environment overrides.

Two generations of the file are understood, told apart by their top-level keys:

* current: ``current-context`` + ``contexts[]``, each entry with ``cluster``
  (``endpoint``, ``tls.ca_file``), ``cache`` (``endpoint``, ``tls.ca_file``,
  ``storage``), ``package`` (``storage``, ``excludes``), ``runner.template`` and
  ``local.capacity`` (the embedded local cluster's, when no endpoint is set);
* older: ``current-cluster`` + ``clusters[]``, each entry with ``endpoint``, a plain
  string ``cache`` URL and ``package``.  An ``http(s)://`` cache URL from that era is
  rewritten to ``grpc(s)://`` with a warning.

``package`` may be a mapping or a one-element list holding one, in either generation,
and ``package.excludes`` is honoured whether or not ``package.storage`` is set.

The file is ``~/.flame/flame.yaml`` unless ``FLAME_CONFIG`` names another one.  After
the file, ``FLAME_ENDPOINT``, ``FLAME_CACHE_ENDPOINT`` and ``FLAME_CACHE_STORAGE``
replace their values, and ``FLAME_CA_FILE`` fills a ``ca_file`` the file left unset.
``FLAME_TOKEN`` (or ``FLAME_TOKEN_FILE``, or ``cluster.token_file`` of the file) is
the access token of a local cluster served over TCP (see :mod:`flamepy._auth`).
Empty variables count as unset.  Every problem raises :class:`ConfigError` naming the
file (or variable), the key path and how to fix it.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from flamepy._errors import ConfigError, ConfigWarning

logger = logging.getLogger("flamepy.config")


DEFAULT_FLAME_CONF = "~/.flame/flame.yaml"
DEFAULT_FLAME_ENDPOINT = "http://127.0.0.1:8080"
DEFAULT_FLAME_CACHE_ENDPOINT = "grpc://127.0.0.1:9090"
DEFAULT_RUNNER_TEMPLATE = "flmrun"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_PACKAGE_EXCLUDES: tuple[str, ...] = (".venv", "__pycache__", ".gitignore", "*.pyc")
DEFAULT_CLUSTER_PORT = 8080
DEFAULT_CACHE_PORT = 9090

FLAME_CONFIG = "FLAME_CONFIG"
FLAME_ENDPOINT = "FLAME_ENDPOINT"
FLAME_CACHE_ENDPOINT = "FLAME_CACHE_ENDPOINT"
FLAME_CACHE_STORAGE = "FLAME_CACHE_STORAGE"
FLAME_CA_FILE = "FLAME_CA_FILE"
FLAME_TOKEN = "FLAME_TOKEN"
FLAME_TOKEN_FILE = "FLAME_TOKEN_FILE"

UNIX_SCHEMES: tuple[str, ...] = ("unix", "grpc+unix")
"""Unix domain socket endpoints: ``unix:///path`` (Frontend), ``grpc+unix:///path`` (cache)."""
CLUSTER_SCHEMES: tuple[str, ...] = ("http", "https", "unix")
CACHE_SCHEMES: tuple[str, ...] = ("grpc", "grpcs", "grpc+tls", "grpc+tcp", "grpc+unix")
PACKAGE_STORAGE_SCHEMES: tuple[str, ...] = (
    "file",
    "http",
    "https",
    "grpc",
    "grpcs",
    "grpc+unix",
)


@dataclass(frozen=True)
class FlameClientTls:
    """TLS settings of one client connection; ``ca_file`` is a PEM bundle path."""

    ca_file: str | None = None


@dataclass(frozen=True)
class FlamePackage:
    """Where Runner uploads application packages and which files it leaves out.

    As in Flame's SDK 0.6, ``excludes`` defaults to :data:`DEFAULT_PACKAGE_EXCLUDES`,
    and flame.yaml's patterns come after them (stored as a tuple);
    :attr:`all_excludes` is that list without repeats.
    """

    storage: str | None
    excludes: Sequence[str] = field(default_factory=lambda: list(DEFAULT_PACKAGE_EXCLUDES))

    def __post_init__(self) -> None:
        if isinstance(self.excludes, str):
            raise TypeError("FlamePackage.excludes must be a list of patterns, not a string")
        object.__setattr__(self, "excludes", tuple(self.excludes))

    @property
    def all_excludes(self) -> tuple[str, ...]:
        """Default patterns followed by the user's, without duplicates."""
        return tuple(dict.fromkeys((*DEFAULT_PACKAGE_EXCLUDES, *self.excludes)))


@dataclass(frozen=True)
class FlameContextRunner:
    """Runner settings; ``template`` is the application Runner copies."""

    template: str | None = None


@dataclass(frozen=True)
class FlameLocalConfig:
    """The embedded local cluster (used when no endpoint is configured): ``capacity``
    is how many instances it runs at once (None: ``FLAME_LOCAL_CAPACITY``, else the
    CPU count)."""

    capacity: int | None = None


@dataclass(frozen=True)
class FlameClusterConfig:
    """The session manager (Frontend) endpoint and its TLS settings."""

    endpoint: str | None
    tls: FlameClientTls | None
    token_file: str | None = None
    """A file holding the cluster's access token (``cluster.token_file``)."""


@dataclass(frozen=True)
class FlameCacheConfig:
    """The object cache endpoint, its TLS settings and the local storage directory."""

    endpoint: str
    tls: FlameClientTls | None
    storage: str | None


SWITCH_OFF = frozenset({"0", "false", "no", "off"})
SWITCH_ON = frozenset({"1", "true", "yes", "on"})


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment variable (``FLAME_OUTPUT``, ``FLAME_PROGRESS``, ...):
    ``0``/``false``/``no``/``off`` is off, ``1``/``true``/``yes``/``on`` is on, and
    anything else (or unset) is ``default``."""
    value = os.environ.get(name, "").strip().lower()
    if value in SWITCH_OFF:
        return False
    if value in SWITCH_ON:
        return True
    return default


def unix_socket_path(url: str) -> str | None:
    """The socket path of a ``unix:`` or ``grpc+unix:`` endpoint; None for other schemes.

    ``unix:///run/flame.sock``, ``unix:/run/flame.sock`` and
    ``grpc+unix:///run/flame.sock`` name the absolute path ``/run/flame.sock``; a
    relative or empty path raises :class:`ConfigError`.
    """
    text = url.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in UNIX_SCHEMES:
        return None
    path = rest[2:] if rest.startswith("//") else rest
    bad = not path.startswith("/") or path.startswith("//") or path.endswith("/")
    if bad or any(ch.isspace() for ch in path):
        raise ConfigError(
            f"invalid endpoint {url!r}: a Unix socket endpoint needs an absolute path "
            "to a socket; "
            f"write it as {scheme.lower()}:///absolute/path/to/socket"
        )
    return path


def parse_endpoint(
    url: str,
    *,
    default_port: int = DEFAULT_CLUSTER_PORT,
    schemes: Sequence[str] = CLUSTER_SCHEMES,
) -> tuple[str, str, int]:
    """Split an endpoint URL into ``(scheme, host, port)``.

    A missing scheme means ``schemes[0]`` (``http`` by default) and a missing port
    means ``default_port``.  IPv6 hosts are written in brackets (``[::1]:80``) and
    returned without them.  A Unix socket endpoint (``unix:///path``, when its scheme
    is allowed) gives ``(scheme, path, 0)``.  Anything else raises
    :class:`ConfigError` naming ``url``.
    """
    allowed = ", ".join(f"{s}://" for s in schemes)

    def bad(problem: str) -> ConfigError:
        return ConfigError(
            f"invalid endpoint {url!r}: {problem}; "
            f"write it as {schemes[0]}://host:port (allowed schemes: {allowed})"
        )

    text = url.strip()
    if not text or any(ch.isspace() for ch in text):
        raise bad("it is empty or contains whitespace")
    unix_scheme = text.partition(":")[0].lower()
    if unix_scheme in UNIX_SCHEMES and ":" in text:
        if unix_scheme not in schemes:
            raise bad(f"unsupported scheme {unix_scheme!r}")
        path = unix_socket_path(text)
        assert path is not None
        return unix_scheme, path, 0
    if "://" not in text:
        text = f"{schemes[0]}://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise bad(f"malformed host or port ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise bad(f"unsupported scheme {parts.scheme!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("a path, query or fragment is not allowed")
    if "@" in parts.netloc:
        raise bad("credentials in the URL are not supported")
    if not parts.hostname:
        raise bad("the host is missing")
    if port == 0:
        raise bad("port 0 is not allowed")
    return scheme, parts.hostname, default_port if port is None else port


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _type_name(value: object) -> str:
    return "mapping" if isinstance(value, dict) else type(value).__name__


@dataclass
class _Settings:
    context_name: str | None = None
    endpoint: str | None = None
    tls: FlameClientTls | None = None
    cache_endpoint: str | None = None
    cache_tls: FlameClientTls | None = None
    cache_storage: str | None = None
    package: FlamePackage | None = None
    template: str | None = None
    token: str | None = None
    token_file: str | None = None
    local_capacity: int | None = None


class _Reader:
    """Typed access to parsed values; errors name ``src`` (file or environment) and key."""

    def __init__(self, src: str) -> None:
        self.src = src

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.src}: {key}: {problem}; {fix}")

    def string(self, value: object, key: str) -> str | None:
        """A string with surrounding blanks removed; null or empty means unset."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_type_name(value)}", "quote it")
        return value.strip() or None

    def relative_to_file(self, text: str) -> Path:
        """A path from the file: ``~`` expanded, relative to the file's directory."""
        path = Path(text).expanduser()
        if path.is_absolute() or self.src == "environment":
            return path
        return Path(self.src).parent / path

    def mapping(self, value: object, key: str) -> Mapping[str, Any] | None:
        if value is None or isinstance(value, dict):
            return value
        fix = "write it as nested 'key: value' lines"
        raise self.fail(key, f"expected a mapping, got {_type_name(value)}", fix)

    def split(self, text: str, key: str, port: int, schemes: Sequence[str]) -> tuple[str, str, int]:
        try:
            return parse_endpoint(text, default_port=port, schemes=schemes)
        except ConfigError as exc:
            raise ConfigError(f"{self.src}: {key}: {exc.message}") from exc

    def endpoint(self, value: object, key: str) -> str | None:
        """A Frontend endpoint, with ``http://`` prefixed when it had no scheme."""
        text = self.string(value, key)
        if text is None:
            return None
        self.split(text, key, DEFAULT_CLUSTER_PORT, CLUSTER_SCHEMES)
        return text if "://" in text or unix_socket_path(text) else f"http://{text}"

    def cache_endpoint(self, value: object, key: str, *, accept_http: bool) -> str | None:
        """A cache endpoint; with ``accept_http`` an old HTTP cache URL becomes gRPC."""
        text = self.string(value, key)
        if text is None:
            return None
        if accept_http and text.lower().startswith(("http://", "https://")):
            scheme, host, port = self.split(text, key, DEFAULT_CACHE_PORT, CLUSTER_SCHEMES)
            new = f"{'grpcs' if scheme == 'https' else 'grpc'}://{_host_port(host, port)}"
            msg = "%s: %s: %r is an HTTP cache URL, which this client does not speak; using %r"
            logger.warning(msg, self.src, key, text, new)
            return new
        self.split(text, key, DEFAULT_CACHE_PORT, CACHE_SCHEMES)
        return text if "://" in text or unix_socket_path(text) else f"grpc://{text}"

    def tls(self, value: object, key: str) -> FlameClientTls | None:
        node = self.mapping(value, key)
        if node is None:
            return None
        return FlameClientTls(ca_file=self.string(node.get("ca_file"), f"{key}.ca_file"))

    def package(self, value: object, key: str) -> FlamePackage | None:
        if isinstance(value, list):
            if len(value) != 1:
                problem = f"expected a mapping or a one-element list, got {len(value)} elements"
                raise self.fail(key, problem, "keep exactly one package entry")
            value, key = value[0], f"{key}[0]"
        node = self.mapping(value, key)
        if node is None:
            return None
        self.known(node, ("storage", "excludes"), key)
        storage = self.string(node.get("storage"), f"{key}.storage")
        scheme, sep, _ = (storage or "").partition("://")
        if storage is not None and (not sep or scheme.lower() not in PACKAGE_STORAGE_SCHEMES):
            fix = "use file:///dir, http(s)://host/path/ or grpc(s)://host:port"
            raise self.fail(f"{key}.storage", f"unsupported package storage {storage!r}", fix)
        raw = node.get("excludes")
        raw = [] if raw is None else raw
        fix = 'write excludes as a YAML list of glob patterns, e.g. ["*.log", "data/"]'
        if not isinstance(raw, list):
            raise self.fail(f"{key}.excludes", f"expected a list, got {_type_name(raw)}", fix)
        for i, item in enumerate(raw):
            if not isinstance(item, str) or not item:
                got = "an empty string" if item == "" else _type_name(item)
                raise self.fail(f"{key}.excludes[{i}]", f"expected a pattern, got {got}", fix)
        if storage is None and not raw:
            return None
        return FlamePackage(storage, [*DEFAULT_PACKAGE_EXCLUDES, *raw])

    def select(
        self, data: Mapping[str, Any], current_key: str, list_key: str
    ) -> tuple[str, Mapping[str, Any], str]:
        """The ``list_key`` entry named by ``current_key``: (name, entry, key path)."""
        name = self.string(data.get(current_key), current_key)
        if name is None:
            fix = f"add '{current_key}: <name>' naming one of the {list_key} entries"
            raise self.fail(current_key, "is not set", fix)
        entries = [] if data.get(list_key) is None else data[list_key]
        if not isinstance(entries, list):
            fix = f"write {list_key} as a list of entries, each with a name"
            raise self.fail(list_key, f"expected a list, got {_type_name(entries)}", fix)
        names: list[str] = []
        for i, entry in enumerate(entries):
            node = self.mapping(entry, f"{list_key}[{i}]")
            entry_name = self.string(node.get("name"), f"{list_key}[{i}].name") if node else None
            if node is None or entry_name is None:
                raise self.fail(f"{list_key}[{i}].name", "is missing", "give every entry a name")
            if entry_name == name:
                return name, node, f"{list_key}[{i}]"
            names.append(entry_name)
        available = ", ".join(repr(n) for n in names) or "none"
        fix = f"set {current_key} to an available name or add a {list_key} entry named {name!r}"
        raise self.fail(
            current_key, f"{name!r} not found in {list_key} (available: {available})", fix
        )

    def known(self, node: Mapping[str, Any] | None, keys: Sequence[str], where: str) -> None:
        """Warn about each key of ``node`` that flamepy does not read, naming the
        nearest one it does (a misspelt ``endpont`` must not go unnoticed)."""
        if not node:
            return
        for name in node:
            if name in keys:
                continue
            near = difflib.get_close_matches(str(name), keys, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(keys)})"
            warnings.warn(
                f"{self.src}: unknown key {where + '.' if where else ''}{name}{hint} "
                "It is ignored.",
                ConfigWarning,
                stacklevel=4,
            )

    def current(self, data: Mapping[str, Any]) -> _Settings:
        self.known(data, ("current-context", "contexts"), "")
        name, entry, key = self.select(data, "current-context", "contexts")
        self.known(entry, ("name", "cluster", "cache", "package", "runner", "local"), key)
        settings = _Settings(context_name=name)
        cluster = self.mapping(entry.get("cluster"), f"{key}.cluster")
        self.known(cluster, ("endpoint", "tls", "token_file"), f"{key}.cluster")
        cache_node = self.mapping(entry.get("cache"), f"{key}.cache")
        self.known(cache_node, ("endpoint", "tls", "storage"), f"{key}.cache")
        runner_node = self.mapping(entry.get("runner"), f"{key}.runner")
        self.known(runner_node, ("template",), f"{key}.runner")
        for part in ("cluster", "cache"):
            node = self.mapping(entry.get(part), f"{key}.{part}")
            if node is not None:
                self.known(
                    self.mapping(node.get("tls"), f"{key}.{part}.tls"),
                    ("ca_file",),
                    f"{key}.{part}.tls",
                )
        if cluster is not None:
            settings.endpoint = self.endpoint(cluster.get("endpoint"), f"{key}.cluster.endpoint")
            settings.tls = self.tls(cluster.get("tls"), f"{key}.cluster.tls")
            token_file = self.string(cluster.get("token_file"), f"{key}.cluster.token_file")
            if token_file is not None:
                settings.token_file = str(self.relative_to_file(token_file))
        cache = self.mapping(entry.get("cache"), f"{key}.cache")
        if cache is not None:
            settings.cache_endpoint = self.cache_endpoint(
                cache.get("endpoint"), f"{key}.cache.endpoint", accept_http=False
            )
            settings.cache_tls = self.tls(cache.get("tls"), f"{key}.cache.tls")
            settings.cache_storage = self.string(cache.get("storage"), f"{key}.cache.storage")
        settings.package = self.package(entry.get("package"), f"{key}.package")
        runner = self.mapping(entry.get("runner"), f"{key}.runner")
        if runner is not None:
            settings.template = self.string(runner.get("template"), f"{key}.runner.template")
        local = self.mapping(entry.get("local"), f"{key}.local")
        self.known(local, ("capacity",), f"{key}.local")
        if local is not None:
            settings.local_capacity = self.capacity(local.get("capacity"), f"{key}.local.capacity")
        return settings

    def capacity(self, value: object, key: str) -> int | None:
        """A whole number of 1 or more; null means unset."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fix = "give the number of instances it may run at once, a whole number of 1 or more"
            raise self.fail(key, f"expected a whole number >= 1, got {value!r}", fix)
        return value

    def older(self, data: Mapping[str, Any]) -> _Settings:
        self.known(data, ("current-cluster", "clusters"), "")
        name, entry, key = self.select(data, "current-cluster", "clusters")
        self.known(entry, ("name", "endpoint", "cache", "package"), key)
        return _Settings(
            context_name=name,
            endpoint=self.endpoint(entry.get("endpoint"), f"{key}.endpoint"),
            cache_endpoint=self.cache_endpoint(
                entry.get("cache"), f"{key}.cache", accept_http=True
            ),
            package=self.package(entry.get("package"), f"{key}.package"),
        )

    def document(self, data: object) -> _Settings:
        """Settings from a whole file; None or an empty mapping count as no file."""
        if data is None or data == {}:
            return _Settings()
        if not isinstance(data, dict):
            fix = "the file must be a YAML mapping with current-context and contexts keys"
            raise self.fail("(top level)", f"expected a mapping, got {_type_name(data)}", fix)
        if "current-context" in data or "contexts" in data:
            return self.current(data)
        if "current-cluster" in data or "clusters" in data:
            return self.older(data)
        fix = "add 'current-context: <name>' and a contexts list with an entry of that name"
        raise self.fail("current-context", "is not set", fix)


def _locate(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read, or None when the default file does not exist."""
    from_env = (environ.get(FLAME_CONFIG) or "").strip()
    if path is not None or from_env:
        origin = "the path argument" if path is not None else FLAME_CONFIG
        chosen = Path(path if path is not None else from_env).expanduser()
        if not chosen.exists():
            raise ConfigError(
                f"{chosen}: config file not found (named by {origin}); "
                f"create it or point {origin} at an existing flame.yaml"
            )
        return chosen
    try:
        default = Path(DEFAULT_FLAME_CONF).expanduser()
    except RuntimeError:  # no resolvable home directory
        return None
    return default if default.exists() else None


def _load(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read the config file ({exc}); make it a readable UTF-8 file"
        ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            f"{path}: invalid YAML at {where}: {problem}; fix the indentation or quoting there"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}; fix the file's syntax") from exc


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return (value.strip() or None) if value else None


def _apply_env(settings: _Settings, environ: Mapping[str, str]) -> None:
    env = _Reader("environment")
    if (endpoint := _env(environ, FLAME_ENDPOINT)) is not None:
        settings.endpoint = env.endpoint(endpoint, FLAME_ENDPOINT)
    if (cache_endpoint := _env(environ, FLAME_CACHE_ENDPOINT)) is not None:
        # The executor manager forwards the cluster's cache.endpoint, which may be http://.
        settings.cache_endpoint = env.cache_endpoint(
            cache_endpoint, FLAME_CACHE_ENDPOINT, accept_http=True
        )
    if (cache_storage := _env(environ, FLAME_CACHE_STORAGE)) is not None:
        settings.cache_storage = cache_storage
    if (ca_file := _env(environ, FLAME_CA_FILE)) is not None:
        if settings.tls is None or settings.tls.ca_file is None:
            settings.tls = FlameClientTls(ca_file=ca_file)
        if settings.cache_tls is None or settings.cache_tls.ca_file is None:
            settings.cache_tls = FlameClientTls(ca_file=ca_file)
    if (token_file := _env(environ, FLAME_TOKEN_FILE)) is not None:
        settings.token_file = token_file
    settings.token = _env(environ, FLAME_TOKEN)


class FlameContext:
    """The client configuration: the file's selected context plus environment overrides.

    ``FlameContext()`` reads ``$FLAME_CONFIG`` or ``~/.flame/flame.yaml`` and
    ``os.environ``; ``path`` and ``environ`` replace those (mainly for tests).
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        self._path = _locate(path, env)
        path_used = self._path
        settings = _Reader(str(path_used)).document(_load(path_used)) if path_used else _Settings()
        _apply_env(settings, env)
        self._context_name = settings.context_name
        self._cluster = FlameClusterConfig(
            endpoint=settings.endpoint, tls=settings.tls, token_file=settings.token_file
        )
        self._token = settings.token
        self._cache = FlameCacheConfig(
            endpoint=settings.cache_endpoint or DEFAULT_FLAME_CACHE_ENDPOINT,
            tls=settings.cache_tls,
            storage=settings.cache_storage,
        )
        self._configured_cache_endpoint = settings.cache_endpoint
        self._package = settings.package
        self._runner = FlameContextRunner(template=settings.template or DEFAULT_RUNNER_TEMPLATE)
        self._local = FlameLocalConfig(capacity=settings.local_capacity)

    @property
    def path(self) -> Path | None:
        """The file read, or None when there was none."""
        return self._path

    @property
    def context_name(self) -> str | None:
        """The selected context (or older-generation cluster) name."""
        return self._context_name

    @property
    def cluster(self) -> FlameClusterConfig:
        return self._cluster

    @property
    def configured_endpoint(self) -> str | None:
        """The endpoint set by the file or FLAME_ENDPOINT; None when neither set one."""
        return self._cluster.endpoint

    @property
    def endpoint(self) -> str:
        """The Frontend endpoint, or :data:`DEFAULT_FLAME_ENDPOINT`."""
        return self._cluster.endpoint or DEFAULT_FLAME_ENDPOINT

    @property
    def tls(self) -> FlameClientTls | None:
        return self._cluster.tls

    @property
    def cache(self) -> FlameCacheConfig:
        return self._cache

    @property
    def cache_endpoint(self) -> str:
        return self._cache.endpoint

    @property
    def configured_cache_endpoint(self) -> str | None:
        """The cache endpoint set by the file or FLAME_CACHE_ENDPOINT; None otherwise."""
        return self._configured_cache_endpoint

    @property
    def cache_tls(self) -> FlameClientTls | None:
        return self._cache.tls

    @property
    def package(self) -> FlamePackage | None:
        return self._package

    @property
    def token(self) -> str | None:
        """The cluster's access token: ``FLAME_TOKEN``, else the contents of
        ``FLAME_TOKEN_FILE`` or ``cluster.token_file``; None when none is set.

        Only a local cluster served over TCP asks for one (Flame's own servers have no
        authentication).  An unreadable or empty file raises :class:`ConfigError`.
        """
        if self._token is not None:
            return self._token
        if self._cluster.token_file is None:
            return None
        from flamepy._auth import read_token_file

        return read_token_file(self._cluster.token_file)

    @property
    def runner(self) -> FlameContextRunner:
        return self._runner

    @property
    def local(self) -> FlameLocalConfig:
        """The embedded local cluster's settings (``local`` of the current context)."""
        return self._local

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for the Frontend channel to become ready."""
        return DEFAULT_CONNECT_TIMEOUT

    def __repr__(self) -> str:
        return (
            f"FlameContext(path={self._path}, context={self._context_name!r}, "
            f"endpoint={self.endpoint!r}, cache={self.cache_endpoint!r})"
        )


__all__ = [
    "CACHE_SCHEMES",
    "CLUSTER_SCHEMES",
    "DEFAULT_CACHE_PORT",
    "DEFAULT_CLUSTER_PORT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_FLAME_CACHE_ENDPOINT",
    "DEFAULT_FLAME_CONF",
    "DEFAULT_FLAME_ENDPOINT",
    "DEFAULT_PACKAGE_EXCLUDES",
    "DEFAULT_RUNNER_TEMPLATE",
    "FLAME_CACHE_ENDPOINT",
    "FLAME_CACHE_STORAGE",
    "FLAME_CA_FILE",
    "FLAME_CONFIG",
    "FLAME_ENDPOINT",
    "FLAME_TOKEN",
    "FLAME_TOKEN_FILE",
    "PACKAGE_STORAGE_SCHEMES",
    "UNIX_SCHEMES",
    "FlameCacheConfig",
    "FlameClientTls",
    "FlameClusterConfig",
    "FlameContext",
    "FlameContextRunner",
    "FlameLocalConfig",
    "FlamePackage",
    "parse_endpoint",
    "unix_socket_path",
]
