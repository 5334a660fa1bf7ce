"""The job page at `/` in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by `make test`) driven by selenium, against a real gateway and the
stages in the test's loop. A refused `?token=` gets the token form with the reason; the token typed
in is kept. A submitted video shows as running, then as ready with its thumbnail, without a reload:
the job's SSE stream changed the page. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from services import stages
from services.transcode.samples import lavfi
from shared.config import Settings
from shared.runtime import Services
from tests.gatewaykit import gateway
from tests.helpers import eventually, running

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# The row as the page's tests read it (app.js keeps these on each <tr>), and its thumbnail.
ROW = """
const row = document.querySelector(`tr[data-job-id="${CSS.escape(arguments[0])}"]`);
if (!row) return null;
const img = row.querySelector("img.thumb");
return {...row.dataset, text: row.innerText, thumbWidth: img && img.complete ? img.naturalWidth : 0,
        deadLetters: document.querySelector("#dead-letters b").textContent,
        tokenFormShown: getComputedStyle(document.querySelector("#token-form")).display !== "none"};
"""


# The token form shown, and the message above it (what the page says when it asks).
ASKING = """
const form = document.querySelector("#token-form");
return getComputedStyle(form).display !== "none" && document.querySelector("#message").textContent;
"""


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(transcode_x264_preset="ultrafast", transcode_tmp_dir=str(tmp_path / "transcode"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):  # no skip: `make test` installs them (.ci/sysdeps)
        assert os.access(path, os.X_OK), f"{path} missing: run `make sysdeps` (Debian chromium, chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_row(driver: webdriver.Chrome, job_id: str, ok: Any, timeout: float) -> dict[str, Any]:
    """Poll the row until `ok(row)`; fail with the row as last seen."""
    seen: list[dict[str, Any] | None] = [None]

    def probe(d: webdriver.Chrome) -> dict[str, Any] | Literal[False]:
        seen[0] = d.execute_script(ROW, job_id)
        return seen[0] if seen[0] and ok(seen[0]) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(probe)
    except Exception as exc:
        raise AssertionError(f"job row not as expected within {timeout}s: {seen[0]!r}") from exc


def wait_script(driver: webdriver.Chrome, script: str, timeout: float) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))
    except Exception as exc:
        raise AssertionError(f"not within {timeout}s: {script}") from exc


def type_token(driver: webdriver.Chrome, token: str) -> None:
    driver.find_element(By.ID, "token-input").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()


async def test_page_shows_a_job_going_from_running_to_ready_without_a_reload(
    services: Services, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    await services.storage.put_bytes("uploads/clip.mp4", lavfi("mp4", 1.0, size="240x160"), "video/mp4")
    later = [stages.load(name) for name in ("transcode", "variant", "finalize")]
    async with gateway(services.settings) as gw, running(services, [stages.load("upload")]), \
            gw.client("web") as http:
        r = await http.post("/v1/assets", json={"key": "uploads/clip.mp4"}, headers={"Idempotency-Key": "page-1"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        async def routed() -> bool:  # upload made the record; with no transcode stage it stays running
            job = await services.jobs.get(job_id)
            return job is not None and job.status == "running" and job.media == "video"

        await eventually(routed, timeout=30)

        # the page, loaded once (selenium blocks, so it runs in a thread while the loop serves), with a
        # token the gateway refuses: it asks for one, saying why; the one typed in is kept
        await asyncio.to_thread(browser.get, f"{gw.url}/?token=jm_not-a-token")
        await asyncio.to_thread(browser.execute_script, "window.loadedOnce = true")
        refused = await asyncio.to_thread(wait_script, browser, ASKING, 20)
        assert "Token refused" in refused and "token=" not in browser.current_url, refused  # out of the address bar
        await asyncio.to_thread(type_token, browser, gw.tokens["web"])
        row = await asyncio.to_thread(wait_row, browser, job_id,
                                      lambda row: row["status"] == "running" and row["via"] == "sse", 30)
        assert "running" in row["text"] and row["deadLetters"].isdigit() and not row["tokenFormShown"], row
        stored = await asyncio.to_thread(browser.execute_script, "return localStorage.getItem('jetmedia.token')")
        assert stored == gw.tokens["web"]
        await asyncio.to_thread(browser.save_screenshot, str(tmp_path / "page-running.png"))

        async with running(services, later):  # now the job can finish; the open page must follow
            row = await asyncio.to_thread(
                wait_row, browser, job_id, lambda row: row["status"] == "ready" and row["thumbWidth"] > 0, 60)
        assert row["finalVia"] == "sse" and int(row["events"]) >= 2, row  # ready came over the stream
        assert row["thumbWidth"] == 240, row  # the poster's `thumb` variant, fetched by its presigned URL
        assert await asyncio.to_thread(browser.execute_script, "return window.loadedOnce") is True  # no reload
        shot = tmp_path / "page-ready.png"
        await asyncio.to_thread(browser.save_screenshot, str(shot))
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
