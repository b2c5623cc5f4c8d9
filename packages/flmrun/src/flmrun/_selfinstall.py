"""Installing the application package inside the instance, when nobody else did.

A Flame executor manager (0.6 and later, and the local one of flame-testkit)
installs an application's package before launch and says so with
``FLAME_PACKAGE_SRC``.  When it did not (no installer configured, or an older
cluster), flmrun's Runner service fetches ``url``, extracts it safely and
installs it into an environment keyed by the package digest, reused across
sessions on this host.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path

from flamepy._config import FlameContext
from flmrun._fetch import download, extract_once, file_name
from flmrun._install import install_python_package

HOME_ENV = "FLMRUN_HOME"
"""Where flmrun keeps packages and environments (default ``~/.cache/flmrun``)."""


def flmrun_home() -> Path:
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "flmrun"


def install_from_url(app_name: str, url: str) -> list[str]:
    """Fetch and install ``url``; return the ``sys.path`` entries (deps first, then src)."""
    root = flmrun_home()
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=downloads)) / f"{uuid.uuid4().hex}.{file_name(url)}"
    try:
        digest = download(
            app_name,
            url,
            partial,
            cache_ca_file=os.environ.get("FLAME_CA_FILE"),
            cache_token=FlameContext().token,
        )
        src = extract_once(partial, root / "packages", digest, source=url)
        installed = install_python_package(src, root=root / "envs", digest=digest)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
            partial.parent.rmdir()
    os.environ["FLAME_PACKAGE_SRC"] = str(installed.src)
    return installed.env["PYTHONPATH"].split(os.pathsep)
