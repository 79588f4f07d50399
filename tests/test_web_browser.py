"""`steplog ui` in a real browser: Debian's chromium, headless, driven by Playwright, against a
real `steplog ui` (uvicorn) on 127.0.0.1 in a subprocess, on a database that real `steplog run`
processes write while the page watches."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from steplog.api import Steplog
from tests.cli_process import spawn, wait_for
from tests.fake_llm_server import FakeLLMServer
from tests.on_disk import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 30_000  # how long a page may take to show what the log says (a bound, not a figure)
KEY = {"OPENAI_API_KEY": "sk-test"}

REMOTE = """\
name = "{name}"
[providers.remote]
kind = "openai"
base_url = "{url}"
model = "fake-1"
api_key_env = "OPENAI_API_KEY"
max_retries = 0
[steps.first]
provider = "remote"
prompt = "First, {name}."
[steps.held]
needs = ["first"]
provider = "remote"
prompt = "Then {name}, held."
"""


@contextmanager
def ui_server(db: Path, cwd: Path) -> Iterator[str]:
    """`steplog ui --port 0` in a subprocess; yields the URL it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")} | KEY
    proc = subprocess.Popen(
        [sys.executable, "-m", "steplog", "--db", str(db), "ui", "--port", "0"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    try:
        assert found, f"no URL in {line!r}: {proc.stderr.read() if proc.stderr else ''}"
        yield found.group(0).rstrip("/")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield found
        finally:
            found.close()


class Site:
    def __init__(self, url: str, db: Path, root: Path, llm: FakeLLMServer) -> None:
        self.url, self.db, self.root, self.llm = url, db, root, llm


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, module_fake_llm_factory: Any) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("browser")
    db = root / "ui.db"
    with Steplog(db) as sl:
        sl.run(
            ROOT / "examples" / "factory" / "pipeline.toml",
            inputs={"idea": "a kettle"},
            job_id="done",
            workspace=root / "done",
        )
    llm = module_fake_llm_factory()
    with ui_server(db, root) as url:
        yield Site(url, db, root, llm)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    found = context.new_page()
    found.set_default_timeout(WAIT_MS)
    try:
        yield found
    finally:
        context.close()


def test_jobs_list_job_and_step(site: Site, page: Any):
    page.goto(site.url + "/")
    row = page.locator('tr[data-job-id="done"]')
    assert row.locator('[data-col="status"]').inner_text() == "succeeded"
    row.locator("a", has_text="done").click()
    page.wait_for_url(re.compile(r"/jobs/done$"))
    assert page.locator('a.step[data-step="qa"]').get_attribute("data-status") == "succeeded"
    page.locator('a.step[data-step="architect"]').click()
    page.wait_for_url(re.compile(r"/jobs/done/steps/architect$"))
    with Steplog(site.db) as sl:
        answer = sl.show("done", "architect").answer
    assert page.locator("pre.answer").first.inner_text() == answer


def test_a_running_steps_state_changes_without_a_reload(site: Site, page: Any, browser: Any):
    release = threading.Event()
    held = threading.Event()

    def decide(body: dict[str, Any]) -> None:
        if "held" in str(body.get("messages")):
            held.set()
            release.wait(WAIT_MS / 1000)
        return None

    site.llm.decide = decide
    pipeline = site.root / "live.toml"
    pipeline.write_text(REMOTE.format(name="live", url=site.llm.url))
    proc = spawn(site.db, "run", str(pipeline), "--job-id", "live", env=KEY, cwd=site.root)
    try:
        assert held.wait(WAIT_MS / 1000), "the held call never came"
        page.goto(site.url + "/jobs/live")
        step = page.locator('a.step[data-step="held"]')
        assert step.get_attribute("data-status") == "running"
        page.evaluate("window.__same_page = true")
        listing = browser.new_page()
        listing.set_default_timeout(WAIT_MS)
        listing.goto(site.url + "/")
        status = listing.locator('tr[data-job-id="live"] [data-col="status"]')
        assert status.inner_text() == "running"
        release.set()
        page.wait_for_selector('a.step[data-step="held"][data-status="succeeded"]')
        page.wait_for_selector('#job-status[data-status="succeeded"]')
        assert step.locator(".step-status").inner_text() == "succeeded"
        assert page.evaluate("window.__same_page") is True  # no reload
        listing.wait_for_selector(
            'tr[data-job-id="live"] [data-col="status"][data-status="succeeded"]'
        )
        listing.close()
    finally:
        release.set()
        site.llm.decide = None
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_resume_a_failed_job_from_the_page(site: Site, page: Any):
    pipeline = site.root / "flaky.toml"
    pipeline.write_text(REMOTE.format(name="flaky", url=site.llm.url))
    site.llm.faults.append(("status", 503, None, {}))
    run = spawn(site.db, "run", str(pipeline), "--job-id", "flaky", env=KEY, cwd=site.root)
    run.communicate(timeout=60)
    assert run.returncode == 1  # the first call failed, so did the job
    wait_for(site.db, "SELECT count(*) FROM jobs WHERE job_id = 'flaky' AND status = 'failed'")
    page.goto(site.url + "/jobs/flaky")
    assert page.locator("#job-status").get_attribute("data-status") == "failed"
    page.locator("#resume").click()
    page.wait_for_url(re.compile(r"/jobs/flaky\?notice=resumed"))
    assert "resumed flaky" in page.locator("#notice").inner_text()
    page.wait_for_selector('#job-status[data-status="succeeded"]')
    with Steplog(site.db) as sl:
        assert sl.job_state("flaky").status == "succeeded"
