"""Video as cameras, phones and editors make it, through the whole asset flow (upload ->
transcode -> variant for the poster -> finalize): each case here once came out wrong or failed."""

from __future__ import annotations

from pathlib import Path

import pytest
import pyvips

from services import stages
from services.transcode.samples import lavfi
from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.jobs import Job
from shared.runtime import Services
from tests.helpers import asset_event, eventually, running

ASSET_STAGES = ("upload", "transcode", "variant", "finalize")


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(transcode_x264_preset="ultrafast", transcode_tmp_dir=str(tmp_path / "transcode"))


async def test_a_still_picture_under_a_song_gets_its_poster_from_its_one_frame(services: Services) -> None:
    """One video frame, 4 s of sound (a cover under a song): nothing to seek to at 10 %, so the
    poster was no frame and the job failed with "Non full-range YUV is non-standard"."""
    source = lavfi("mp4", 4.0, size="320x240", video_seconds=0.04)
    await services.storage.put_bytes("uploads/song.mp4", source)
    job = await _run_asset(services, "uploads/song.mp4", "still-song")

    assert job.status == "ready", job.errors
    outputs = {o.preset: o for o in job.outputs}
    assert (outputs["poster"].width, outputs["poster"].height) == (320, 240)
    assert outputs["mp4"].duration == pytest.approx(4.0, abs=0.2) and outputs["mp4"].audio_codec == "aac"
    assert {o.preset for o in job.parts["poster"].outputs} == {"thumb", "display"}


async def test_anamorphic_video_comes_out_in_square_pixels_poster_included(services: Services) -> None:
    """PAL DV/DVD: 720x576 pixels shown 16:9-ish (SAR 16:11). The MP4 kept the SAR (players
    widen it) but the JPEG poster, and its variants, came out 720x576: squeezed."""
    source = lavfi("mp4", 1.0, size="720x576", extra=["-vf", "setsar=16/11"])
    await services.storage.put_bytes("uploads/dv.mp4", source)
    job = await _run_asset(services, "uploads/dv.mp4", "dv")

    assert job.status == "ready", job.errors
    outputs = {o.preset: o for o in job.outputs}
    assert (outputs["mp4"].width, outputs["mp4"].height) == (1046, 576)  # 720 * 16/11, even
    assert (outputs["poster"].width, outputs["poster"].height) == (1046, 576)
    display = next(o for o in job.parts["poster"].outputs if o.preset == "display")
    assert (display.width, display.height) == (1046, 576)
    poster = pyvips.Image.new_from_buffer(await services.storage.get_bytes(outputs["poster"].key), "")
    assert poster.width == 1046


async def _run_asset(services: Services, key: str, event_id: str) -> Job:
    async with running(services, [stages.load(name) for name in ASSET_STAGES]):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(key, event_id=event_id))
        return await eventually(lambda: _final(services, event_id), timeout=60)


async def _final(services: Services, job_id: str) -> Job | None:
    job = await services.jobs.get(job_id)
    return job if job is not None and job.final else None
