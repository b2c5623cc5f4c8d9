"""Take the screenshots of the documentation site that docs/about.md shows.

    uv run --group docs python docs/screenshots.py

Builds the site into a temporary directory, serves it on 127.0.0.1 (a free port)
and saves ``docs/images/getting-started.png`` and ``docs/images/api-runner.png``
with the system's Chromium through Playwright.  The build here is not strict,
since the pictures it is about to take may not exist yet; ``uv run nox -s docs``
is the strict build.  Only the local server is reached: any other request of the
pages is refused.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _browser import launch  # docs/_browser.py: this script's folder is on sys.path
from playwright.sync_api import Route, ViewportSize, sync_playwright

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
IMAGES = DOCS / "images"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
PAGES = {
    "getting-started.png": "getting-started/",
    "api-runner.png": "api/runner/",
}
"""Picture file name -> the page's path in the site."""


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves the built site without logging every request."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def build(site: Path) -> None:
    """The site, built by mkdocs into ``site``."""
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site)],
        cwd=REPO,
        check=True,
    )


def shoot(base: str) -> None:
    """Save each page of :data:`PAGES` under :data:`IMAGES`."""

    def local_only(route: Route) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:
            route.abort()

    IMAGES.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.route("**/*", local_only)
            for name, path in PAGES.items():
                page.goto(base + path, wait_until="load")
                target = IMAGES / name
                page.screenshot(path=str(target), full_page=False)
                print(f"saved {target.relative_to(REPO)}")
        finally:
            browser.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="flame-docs-") as tmp:
        site = Path(tmp) / "site"
        build(site)
        handler = functools.partial(QuietHandler, directory=str(site))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            shoot(f"http://127.0.0.1:{server.server_address[1]}/")
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


if __name__ == "__main__":
    main()
