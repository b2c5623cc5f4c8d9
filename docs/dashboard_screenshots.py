"""Screenshots of every dashboard page, for docs/dashboard.md.

``uv run python docs/dashboard_screenshots.py`` starts a local cluster with its
dashboard, runs a Runner program against it (slow calls, a failing one, cached
objects) and saves ``docs/images/dashboard-<page>.png`` with Debian's Chromium
(``/usr/bin/chromium``) driven by Playwright.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _browser import launch  # docs/_browser.py: this script's folder is on sys.path
from playwright.sync_api import Page, sync_playwright

from flame_testkit import ClusterThread, LocalClusterConfig

IMAGES = Path(__file__).parent / "images"
LIB = """
import time

def simulate(i):
    time.sleep(0.01)
    print(f"simulated step {i}")
    return i * i

def parse(text):
    return int(text)
"""
PROGRAM = """
import sys, lib
from flamepy import Runner

with Runner("pricing") as rr:
    simulate = rr.service(lib.simulate)
    parse = rr.service(lib.parse)
    try:
        parse("twelve").get()
    except ValueError:
        pass
    rr.put_object(list(range(100_000)))
    futures = [simulate(i) for i in range(6000)]
    print(simulate.session_id, parse.session_id, flush=True)
    rr.get(futures, timeout=600)
    sys.stdin.readline()
"""


def _shot(page: Page, url: str, name: str, wait: str, settle: float = 1.5) -> None:
    page.goto(url)
    page.locator(wait).first.wait_for(timeout=30_000)
    time.sleep(settle)
    page.screenshot(path=str(IMAGES / f"dashboard-{name}.png"))
    print("saved", name)


def main() -> None:
    IMAGES.mkdir(exist_ok=True)
    config = LocalClusterConfig(dashboard=True, capacity=2, delay_release=30)
    with ClusterThread(config) as cluster, tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "lib.py").write_text(LIB)
        (project / "main.py").write_text(PROGRAM)
        proc = subprocess.Popen(
            [sys.executable, "main.py"], cwd=project, text=True,
            env={**cluster.client_env(), "FLAME_OUTPUT": "0"},  # its stdout is not read
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        work, failed = proc.stdout.readline().split()
        url = str(cluster.dashboard_url)
        try:
            with sync_playwright() as p:
                browser = launch(p)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                _shot(page, f"{url}#/", "overview", "#chart .u-over", settle=8)
                _shot(page, f"{url}#/sessions", "sessions", f'tr[data-session="{work}"]')
                _shot(page, f"{url}#/applications", "applications", "#applications")
                _shot(page, f"{url}#/instances", "instances", "tr[data-instance]")
                instance = page.locator("tr[data-instance]").first.get_attribute("data-instance")
                _shot(page, f"{url}#/instance/{instance}", "instance-log", "#log-stdout")
                _shot(page, f"{url}#/cache", "cache", "tr[data-key]")
                page.goto(f"{url}#/session/{failed}")
                page.locator("details.traceback summary").first.click()
                time.sleep(1.0)
                page.screenshot(path=str(IMAGES / "dashboard-tasks.png"))
                print("saved tasks")
                browser.close()
        finally:
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(300)


if __name__ == "__main__":
    main()
