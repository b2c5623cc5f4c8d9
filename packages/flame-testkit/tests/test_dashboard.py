"""The dashboard (issue 23), in a real browser: Debian's Chromium driven by Playwright.

A dedicated local cluster serves it; Runner programs run as real client processes
against that cluster, and the page is read as a user would see it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flame_testkit import ClusterThread
from flame_testkit._plugin import testing_cluster_config as cluster_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed: apt-get install chromium (CI installs it); "
    "the dashboard's browser tests need a real browser",
)
BROWSER_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

LIB = """
import time

def slow(i):
    time.sleep(0.005)
    return i

def broken(x):
    raise ValueError(f"boom-dashboard {x}")
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterThread]:
    with ClusterThread(cluster_config(dashboard=True, capacity=2)) as running:
        yield running


@pytest.fixture(scope="module")
def page(cluster: ClusterThread) -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium installed: apt-get install chromium (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def _program(tmp_path: Path, cluster: ClusterThread, body: str) -> subprocess.Popen[str]:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "lib.py").write_text(LIB)
    (project / "main.py").write_text("import sys, lib\nfrom flamepy import Runner\n" + body)
    return subprocess.Popen(
        [sys.executable, "main.py"], cwd=project, env=cluster.client_env(), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return out


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_request_without_the_token_gets_403(cluster: ClusterThread) -> None:
    url = cluster.dashboard_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    base, _, token = url.partition("/?token=")
    for path in ("/", "/api/sessions", "/api/summary", "/static/app.js", "/api/cache"):
        assert _status(base + path) == 403, path
        assert _status(f"{base}{path}?token=not-{token}") == 403, path
        assert _status(f"{base}{path}?token={token}") == 200, path
    assert _status(base + "/api/sessions", {"X-Flame-Token": token}) == 200
    # a page that reached it through another host name (DNS rebinding) is refused too
    assert _status(url, {"Host": f"attacker.example:{base.rsplit(':', 1)[1]}"}) == 403
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]


@needs_chromium
def test_the_token_is_needed_in_the_browser_too(cluster: ClusterThread, page: Any) -> None:
    base = str(cluster.dashboard_url).partition("?")[0]
    response = page.goto(base)
    assert response.status == 403
    assert "needs its token" in page.inner_text("body")


@needs_chromium
def test_the_sessions_page_shows_a_running_session_and_its_count_rises(
    tmp_path: Path, cluster: ClusterThread, page: Any
) -> None:
    proc = _program(
        tmp_path,
        cluster,
        """
with Runner("dash") as rr:
    slow = rr.service(lib.slow)
    futures = [slow(i) for i in range(2000)]
    print(slow.session_id, flush=True)
    assert rr.get(futures, timeout=300) == list(range(2000))
print("done", flush=True)
""",
    )
    try:
        assert proc.stdout is not None
        session_id = proc.stdout.readline().strip()
        assert session_id, proc.stderr and proc.stderr.read()
        page.goto(f"{cluster.dashboard_url}#/sessions")
        row = page.locator(f'tr[data-session="{session_id}"]')
        row.wait_for(timeout=30_000)
        assert row.locator("td").nth(1).inner_text().startswith("dash-")
        done = row.locator("td.succeed")
        first = int(done.inner_text())
        time.sleep(1.0)
        second = int(done.inner_text())  # the page updated itself, with no reload
        assert second > first, (first, second)
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        # the JSON document behind the page says the same
        api = str(cluster.dashboard_url).replace("/?", "/api/sessions?")
        with urllib.request.urlopen(api, timeout=10) as response:
            rows = {s["id"]: s for s in json.load(response)["sessions"]}
        assert rows[session_id]["tasks"]["succeed"] >= second
    finally:
        assert _finish(proc).endswith("done\n")


@needs_chromium
def test_a_failed_call_shows_its_traceback(
    tmp_path: Path, cluster: ClusterThread, page: Any
) -> None:
    proc = _program(
        tmp_path,
        cluster,
        """
with Runner("dash") as rr:
    broken = rr.service(lib.broken)
    try:
        broken(7).get()
    except ValueError as exc:
        print(broken.session_id, flush=True)
    sys.stdin.readline()  # the session stays while the test looks
print("done", flush=True)
""",
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        session_id = proc.stdout.readline().strip()
        assert session_id, proc.stderr and proc.stderr.read()
        page.goto(f"{cluster.dashboard_url}#/session/{session_id}")
        failed = page.locator("details.traceback").first
        failed.wait_for(timeout=30_000)
        assert "ValueError: boom-dashboard 7" in failed.locator("summary").inner_text()
        failed.locator("summary").click()
        text = failed.locator("pre").inner_text()
        assert "Traceback (most recent call last)" in text
        assert 'raise ValueError(f"boom-dashboard {x}")' in text and "lib.py" in text
        time.sleep(1.2)  # an open traceback stays open across refreshes
        assert failed.get_attribute("open") is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
    finally:
        assert _finish(proc).endswith("done\n")


@needs_chromium
def test_every_page_renders_its_data(cluster: ClusterThread, page: Any) -> None:
    page.goto(f"{cluster.dashboard_url}#/applications")
    page.locator('tr[data-application="flmrun"]').wait_for(timeout=10_000)
    page.goto(f"{cluster.dashboard_url}#/")
    page.locator("#chart .u-over").wait_for(timeout=10_000)  # uPlot drew the chart
    assert int(page.inner_text("#open-sessions")) >= 0
    page.goto(f"{cluster.dashboard_url}#/cache")
    page.locator("#objects").wait_for(timeout=10_000)
    page.goto(f"{cluster.dashboard_url}#/instances")
    page.locator("#instances").wait_for(timeout=10_000)


def test_a_traceback_is_read_without_running_the_pickled_code(tmp_path: Path) -> None:
    import pickle

    from flame_testkit.dashboard._failures import failure_of
    from flamepy.runner.types import BATCH_RESULT_MAGIC, ERROR_RESULT_MAGIC

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.system, (f"touch {marker}",))

    text = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: no\n'
    payload = ERROR_RESULT_MAGIC + pickle.dumps((Evil(), "ValueError", "no", text))
    found = failure_of(payload)
    assert found is not None and found.traceback == text and found.type_name == "ValueError"
    batch = BATCH_RESULT_MAGIC + pickle.dumps([b"FLMIok", payload])
    assert failure_of(batch) == found
    assert not marker.exists()  # the exception object was never built
    assert failure_of(b"FLMI\x80garbage") is None
    assert failure_of(ERROR_RESULT_MAGIC + b"junk") is None


EMBEDDED = """
import json, urllib.request
from flamepy import Runner
from flame_testkit._embedded import embedded_cluster

with Runner("dash") as rr:
    assert rr.service(abs)(-3).get() == 3
    url = embedded_cluster().dashboard_url
    with urllib.request.urlopen(url.replace("/?", "/api/applications?"), timeout=10) as r:
        names = [a["name"] for a in json.load(r)["applications"]]
    print(url, rr.application in names)
"""


def test_the_embedded_cluster_serves_it_with_flame_dashboard_1(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env.update(HOME=str(tmp_path), FLAME_DASHBOARD="1")
    proc = subprocess.run(
        [sys.executable, "-c", EMBEDDED], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    url, listed = proc.stdout.split()
    assert url.startswith("http://127.0.0.1:") and "/?token=" in url and listed == "True"
    assert proc.stderr.count(f"flame dashboard: {url}") == 1
    without = {k: v for k, v in env.items() if k != "FLAME_DASHBOARD"}
    plain = subprocess.run(
        [sys.executable, "-c", EMBEDDED], cwd=tmp_path, env=without, capture_output=True,
        text=True, timeout=180,
    )  # fmt: skip
    assert plain.returncode != 0 and "flame dashboard" not in plain.stderr  # none started


WITHOUT_AIOHTTP = """
import sys
sys.modules["aiohttp"] = None  # as if flame-testkit[dashboard] were not installed
from flame_testkit import ClusterThread, LocalClusterConfig, LocalClusterError
try:
    with ClusterThread(LocalClusterConfig(dashboard=True, capacity=1)):
        pass
except LocalClusterError as exc:
    print(type(exc).__name__, exc)
"""


def test_without_aiohttp_the_dashboard_says_what_to_install(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIOHTTP], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ClusterConfigError the dashboard needs aiohttp")
    assert "pip install 'flame-testkit[dashboard]'" in proc.stdout
