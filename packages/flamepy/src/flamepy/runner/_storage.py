"""Where Runner packages go: a directory, the object cache, or an HTTP server.

``package.storage`` in flame.yaml (or ``Runner(storage=...)``) picks one:
``file://<dir>`` (the directory must exist), ``grpc(s)://host:port`` (the object
cache, also the default) or ``http(s)://<base>/`` (HTTP PUT to upload, DELETE to
remove).  Every backend answers ``exists`` so that an unchanged package, which
has the same content-hash name, is not uploaded again.  A backend that can list
(a directory, the cache) also answers ``packages``: every package of a name, so
that superseded ones can be pruned.
"""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path

from flamepy._cache.client import client_for
from flamepy._config import unix_socket_path
from flamepy._errors import ConfigError, InternalError
from flamepy.runner._package import Package, is_package_of

log = logging.getLogger("flamepy.runner.storage")

HTTP_TIMEOUT = 300.0


def _archive(package: Package) -> Path:
    if package.path is None:
        raise InternalError(f"package {package.file_name} was not built, so it cannot be uploaded")
    return package.path


class PackageStorage(ABC):
    """Uploads, checks and deletes package archives; URLs name them for the installer."""

    @abstractmethod
    def url_for(self, package: Package) -> str: ...

    @abstractmethod
    def exists(self, package: Package) -> bool: ...

    @abstractmethod
    def upload(self, package: Package) -> str: ...

    @abstractmethod
    def delete(self, url: str) -> None: ...

    def packages(self, name: str) -> list[str] | None:
        """The URLs of every stored package of ``name``; None when this storage
        cannot list (HTTP)."""
        return None


class FileStorage(PackageStorage):
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigError(
                f"package storage directory {self.directory} does not exist; create it, or "
                "set package.storage in flame.yaml (or Runner(storage=...)) to another place"
            )

    def url_for(self, package: Package) -> str:
        return (self.directory / package.file_name).resolve().as_uri()

    def exists(self, package: Package) -> bool:
        target = self.directory / package.file_name
        return target.is_file() and target.stat().st_size == package.size

    def upload(self, package: Package) -> str:
        target = self.directory / package.file_name
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(_archive(package), tmp)
        tmp.replace(target)
        return self.url_for(package)

    def delete(self, url: str) -> None:
        Path(urllib.parse.urlparse(url).path).unlink(missing_ok=True)

    def packages(self, name: str) -> list[str]:
        return [
            path.resolve().as_uri()
            for path in self.directory.iterdir()
            if is_package_of(path.name, name) and path.is_file()
        ]


class CacheStorage(PackageStorage):
    """Packages live in the object cache at ``<app>/pkg/<file>``."""

    def __init__(
        self, app: str, cache_endpoint: str, ca_file: str | None, url_base: str | None = None
    ) -> None:
        self.app = app
        self.client = client_for(cache_endpoint, ca_file)
        base = urllib.parse.urlparse(url_base or cache_endpoint)
        socket = unix_socket_path(url_base or cache_endpoint)
        if socket is not None:
            # The socket path travels in the authority, percent-encoded (as in
            # http+unix:// URLs), so that the URL's path stays the cache key.
            self.url_prefix = f"grpc+unix://{urllib.parse.quote(socket, safe='')}"
        else:
            scheme = "grpcs" if base.scheme in ("grpcs", "grpc+tls") else "grpc"
            self.url_prefix = f"{scheme}://{base.netloc}"

    def key(self, package: Package) -> str:
        return f"{self.app}/pkg/{package.file_name}"

    def url_for(self, package: Package) -> str:
        return f"{self.url_prefix}/{self.key(package)}"

    def exists(self, package: Package) -> bool:
        # Packages are uploaded once under a new content-hash key, so version 1: a
        # conditional GET at version 1 is "not modified" (no data moved) when present.
        return self.client.probe(self.key(package), version=1)

    def upload(self, package: Package) -> str:
        self.client.upload(self.key(package), _archive(package))
        return self.url_for(package)

    def delete(self, url: str) -> None:
        key = urllib.parse.urlparse(url).path.lstrip("/")
        self.client.delete(key)

    def packages(self, name: str) -> list[str]:
        prefix = f"{name}/pkg/"
        return [
            f"{self.url_prefix}/{key}"
            for key in self.client.keys(prefix)
            if is_package_of(key[len(prefix) :], name)
        ]


class HttpStorage(PackageStorage):
    def __init__(self, base: str) -> None:
        self.base = base if base.endswith("/") else base + "/"

    def url_for(self, package: Package) -> str:
        return urllib.parse.urljoin(self.base, package.file_name)

    def _request(self, method: str, url: str, data: bytes | None = None) -> int:
        request = urllib.request.Request(url, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except urllib.error.URLError as exc:
            raise InternalError(
                f"package storage {self.base} is unreachable: {exc.reason}"
            ) from exc

    def exists(self, package: Package) -> bool:
        return self._request("HEAD", self.url_for(package)) == 200

    def upload(self, package: Package) -> str:
        url = self.url_for(package)
        status = self._request("PUT", url, _archive(package).read_bytes())
        if status not in (200, 201, 204):
            raise InternalError(f"uploading the package to {url} failed with HTTP {status}")
        return url

    def delete(self, url: str) -> None:
        status = self._request("DELETE", url)
        if status not in (200, 202, 204, 404):
            log.warning("deleting package %s failed with HTTP %d", url, status)


def storage_for(
    url: str | None, app: str, *, cache_endpoint: str, cache_ca_file: str | None
) -> PackageStorage:
    """The backend for ``url`` (None: the object cache)."""
    if url is None:
        return CacheStorage(app, cache_endpoint, cache_ca_file)
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme == "file":
        return FileStorage(urllib.parse.urlparse(url).path)
    if scheme in ("http", "https"):
        return HttpStorage(url)
    if scheme in ("grpc", "grpcs", "grpc+unix"):
        return CacheStorage(app, cache_endpoint, cache_ca_file, url_base=url)
    raise ConfigError(
        f"unsupported package storage {url!r}: use file://<dir>, grpc(s)://host:port "
        "or http(s)://<base>/"
    )


__all__ = [
    "CacheStorage",
    "FileStorage",
    "HttpStorage",
    "PackageStorage",
    "storage_for",
]
