"""`jetmedia up` keeps its objects: stopped and started again on the same data dir, an export made
before is still listed as ready and still downloads, from the link handed out before."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.runtime import Services
from tests.helpers import download, eventually, export_event, final_job
from tests.integration.test_up import jetmedia_up


def stack_settings(banner: str) -> Settings:
    exports = dict(re.findall(r"export JETMEDIA_(\w+)=(\S+)", banner))
    return Settings.from_env({}, **{k.lower(): v for k, v in exports.items()}, metrics_port=0)


async def test_an_export_made_before_a_restart_is_still_downloadable(tmp_path: Path) -> None:
    data = b"kept across restarts\n" * 5000
    with jetmedia_up(tmp_path) as (up, banner):
        before = stack_settings(banner)
        async with Services.open(before, name="test-restart") as services:
            await services.storage.put_bytes("keep/notes.txt", data)
            await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("kept", keys=["keep/notes.txt"]))
            job = await eventually(lambda: final_job(services, "kept"), timeout=60)
        assert job.status == "ready" and job.url, job.errors
        first = tmp_path / "first.zip"
        await asyncio.to_thread(download, job.url, str(first))
        up.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.wait, 60) == 0

    with jetmedia_up(tmp_path) as (up, banner):
        after = stack_settings(banner)
        assert (after.s3_access_key, after.s3_secret_key) == (before.s3_access_key, before.s3_secret_key)
        assert after.s3_endpoint == before.s3_endpoint  # its ports were free again: same endpoint
        async with Services.open(after, name="test-restart") as services:
            again = await services.jobs.get("kept")
            assert again is not None and again.status == "ready" and again.url == job.url
            assert await services.storage.get_bytes("keep/notes.txt") == data
            fresh = await services.storage.presign(again.exports[0].key)
        for n, url in enumerate((job.url, fresh)):
            path = tmp_path / f"after-{n}.zip"
            await asyncio.to_thread(download, url, str(path))
            assert path.read_bytes() == first.read_bytes()
        up.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.wait, 60) == 0
