"""Cancelling an export while the transcode stage converts its items: ffmpeg killed, temp files
gone, and the outputs already made for the export deleted; nothing of the export is left in S3."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from services import stages
from services.transcode.ffmpeg import ffmpeg_exe
from services.transcode.samples import lavfi
from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.runtime import Services
from tests.helpers import eventually, export_event, final_job, processes_with, running


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """ffmpeg at playback speed (`-readrate 1`), so an encode is reliably still running when cancelled."""
    wrapper = tmp_path / "ffmpeg-at-playback-speed"
    wrapper.write_text(f'#!/bin/sh\nexec "{ffmpeg_exe()}" -readrate 1 "$@"\n')
    wrapper.chmod(0o755)
    return settings.replace(ffmpeg=str(wrapper), transcode_tmp_dir=str(tmp_path / "transcode"))


async def test_cancel_during_transforms_leaves_nothing(services: Services, settings: Settings) -> None:
    root = Path(settings.transcode_tmp_dir or "")
    for key, seconds in (("talks/short.wav", 1.0), ("talks/long1.wav", 10.0), ("talks/long2.wav", 10.0)):
        await services.storage.put_bytes(key, await asyncio.to_thread(lavfi, "wav", seconds))

    async def one_output_made_and_encoding() -> bool:
        return bool(await services.storage.list_keys("exports/exp-cancel/items/")) and bool(processes_with(str(root)))

    async with running(services, [stages.load(name) for name in ("upload", "chunk", "transcode", "finalize")]):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-cancel", prefix="talks/", transform="mp3"))
        await eventually(one_output_made_and_encoding, timeout=30)
        assert await services.cancel("exp-cancel")
        job = await eventually(lambda: final_job(services, "exp-cancel"), timeout=10)
        await eventually(lambda: _nothing_running(root), timeout=10)
        await asyncio.sleep(1.0)  # nothing shows up late either

    assert job.status == "cancelled"
    assert processes_with(str(root)) == [] and _listing(root) == []
    assert await services.storage.list_keys("exports/") == []
    assert await services.storage.list_keys("transcodes/") == []
    assert await services.storage.open_multipart_uploads() == []


async def _nothing_running(root: Path) -> bool:
    return not processes_with(str(root)) and not _listing(root)


def _listing(root: Path) -> list[str]:
    return sorted(os.listdir(root)) if os.path.isdir(root) else []
