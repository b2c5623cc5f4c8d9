"""The browser the screenshot scripts drive: Debian's Chromium through Playwright.

Playwright never downloads a browser here; ``apt-get install chromium`` provides
``/usr/bin/chromium``.  The flags keep Chromium from reaching for the network
(updates, sync, QUIC) on a machine that has none.
"""

from __future__ import annotations

from playwright.sync_api import Browser, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def launch(playwright: Playwright) -> Browser:
    """Headless Chromium from Debian's package."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
