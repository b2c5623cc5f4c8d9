"""The executor manager's application installer (flame-config.md §4).

Before an instance is launched, :meth:`AppInstaller.install` downloads the application's
package (``url``), extracts it safely and installs it, and returns the environment entries
the instance needs.  Layout under ``root``::

    downloads/<sha256 of url>/<last URL path segment>   the latest download of that URL
    packages/<digest>/src/                              the extracted package (once per digest)
    envs/<digest>/{src,deps,install.log,...}            python installs (flmrun._install)

Installs are keyed by *content*: ``<digest>`` is the SHA-256 of the downloaded file, so two
URLs serving the same bytes share one install and a URL whose content changed gets a new
one.  Every call downloads again (that is how a change is noticed); concurrent calls for
the same installer and URL share one download, and work on one digest is serialized by an
asyncio lock per digest plus file locks (so several processes may share ``root``).

All blocking work runs in worker threads; the event loop stays free.  Errors are
:class:`flmrun._errors.InstallError` (download, URL or installer problems) or
:class:`flmrun._errors.UnsafeArchiveError` (a refused archive), both ``FlmrunError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from flamepy._auth import read_token_file
from flamepy.proto import types_pb2
from flamepy.runner._deps import INDEX_VARIABLES
from flmrun._errors import InstallError
from flmrun._fetch import CACHE_DEFAULT_PORT, HTTP_TIMEOUT, download, extract_once, file_name
from flmrun._install import install_python_package
from flmrun._tools import default_uv

__all__ = [
    "CACHE_DEFAULT_PORT",
    "HTTP_TIMEOUT",
    "PATH_LIKE",
    "AppInstaller",
    "binary_env",
    "merge_env",
]

PATH_LIKE = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH")
"""Variables whose values :func:`merge_env` puts in front of the existing ones."""

Kind = Literal["python", "binary"]
_Key = tuple[Kind, str, tuple[tuple[str, str], ...]]


def merge_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` updated with ``extra``; :data:`PATH_LIKE` values are prepended, not replaced."""
    merged = dict(base)
    for key, value in extra.items():
        old = base.get(key, "")
        merged[key] = f"{value}{os.pathsep}{old}" if key in PATH_LIKE and old else value
    return merged


class AppInstaller:
    """Downloads, extracts and installs application packages under ``root``.

    ``cache_ca_file`` is the PEM bundle trusted for ``grpcs://`` package URLs (system roots
    when ``None``); ``cache_token_file`` holds the access token of the cluster's cache
    (TCP clusters); ``python`` is the interpreter python packages are installed for.
    """

    def __init__(
        self,
        root: Path,
        *,
        cache_ca_file: str | None = None,
        cache_token_file: str | None = None,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(root)
        self.cache_ca_file = cache_ca_file
        self.cache_token_file = cache_token_file
        self.python = python
        # Resolved now, outside any project: a package's .python-version must not
        # change which uv runs (a pyenv shim would pick it from there).
        self.uv = default_uv()
        self._digest_locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[_Key, asyncio.Future[dict[str, str]]] = {}

    async def install(self, app_name: str, spec: types_pb2.ApplicationSpec) -> dict[str, str]:
        """Install ``spec``'s package; return the extra environment for the instance.

        No ``installer`` gives ``{}`` (the ``url`` is then ignored), and so does an
        installer without a ``url``.  The installer must be ``python`` or ``binary``
        (any case), else :class:`InstallError`.
        """
        installer = spec.installer.strip() if spec.HasField("installer") else ""
        if not installer:
            return {}
        kind = installer.lower()
        if kind not in ("python", "binary"):
            raise InstallError(
                f"application {app_name}: unknown installer {installer!r}; "
                "expected 'python' or 'binary'"
            )
        url = spec.url.strip() if spec.HasField("url") else ""
        if not url:
            return {}
        # Index settings in the application's environment are honoured (and key it).
        settings = {
            e.name: e.value for e in spec.environments if e.name in INDEX_VARIABLES and e.value
        }
        key: _Key = (
            "python" if kind == "python" else "binary",
            url,
            tuple(sorted(settings.items())),
        )
        shared = self._inflight.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._install(app_name, key[0], url, settings))
            self._inflight[key] = shared
            shared.add_done_callback(lambda done: self._finished(key, done))
        return dict(await asyncio.shield(shared))

    async def cancel_all(self) -> None:
        """Stop waiting for the installs in flight (at shutdown); a download already
        running in a worker thread ends at its own deadline."""
        pending = list(self._inflight.values())
        for shared in pending:
            shared.cancel()
        for shared in pending:
            with contextlib.suppress(BaseException):
                await shared

    def _cache_token(self) -> str | None:
        if self.cache_token_file is None:
            return None
        return read_token_file(self.cache_token_file)

    def _finished(self, key: _Key, done: asyncio.Future[dict[str, str]]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning if every waiter left

    async def _install(
        self, app_name: str, kind: Kind, url: str, settings: dict[str, str]
    ) -> dict[str, str]:
        download_dir = self.root / "downloads" / hashlib.sha256(url.encode()).hexdigest()
        name = file_name(url)
        partial = download_dir / f".{uuid.uuid4().hex}.{name}"  # keeps the archive suffix
        try:
            digest = await asyncio.to_thread(
                download,
                app_name,
                url,
                partial,
                cache_ca_file=self.cache_ca_file,
                cache_token=self._cache_token(),
            )
            lock = self._digest_locks.setdefault(digest, asyncio.Lock())
            async with lock:
                src = await asyncio.to_thread(
                    functools.partial(extract_once, source=url),
                    partial,
                    self.root / "packages",
                    digest,
                )
                if kind == "binary":
                    return binary_env(src, digest)
                installed = await asyncio.to_thread(
                    install_python_package,
                    src,
                    root=self.root / "envs",
                    digest=digest,
                    python=self.python,
                    settings=settings,
                    uv=self.uv,
                )
                return dict(installed.env)
        finally:
            with contextlib.suppress(OSError):
                os.replace(partial, download_dir / name)  # keep the latest for inspection


def binary_env(src: Path, digest: str) -> dict[str, str]:
    """The environment of a ``binary`` install (flame-config.md §4.4)."""
    libs = [str(src / "libs")]
    if (src / "lib").is_dir():
        libs.append(str(src / "lib"))
    return {
        "FLAME_APP_DIR": str(src),
        "PATH": os.pathsep.join([str(src / "bin"), str(src)]),
        "LD_LIBRARY_PATH": os.pathsep.join(libs),
        "FLAME_PACKAGE_DIGEST": digest,
        "FLAME_PACKAGE_SRC": str(src),
    }
