"""Video as cameras, phones and editors make it, through the whole asset flow (upload ->
transcode -> variant for the poster -> finalize): each case here once came out wrong or failed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import pyvips

from services.transcode import transcode_file
from services.transcode.ffmpeg import ffmpeg_exe
from services.transcode.probe import probe
from services.transcode.samples import lavfi
from shared.config import Settings
from shared.runtime import Context, Services
from tests.helpers import run_asset


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(transcode_x264_preset="ultrafast", transcode_tmp_dir=str(tmp_path / "transcode"))


async def test_a_still_picture_under_a_song_gets_its_poster_from_its_one_frame(services: Services) -> None:
    """One video frame, 4 s of sound (a cover under a song): nothing to seek to at 10 %, so the
    poster was no frame and the job failed with "Non full-range YUV is non-standard"."""
    source = lavfi("mp4", 4.0, size="320x240", video_seconds=0.04)
    await services.storage.put_bytes("uploads/song.mp4", source)
    job = await run_asset(services, "uploads/song.mp4", "still-song")

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
    job = await run_asset(services, "uploads/dv.mp4", "dv")

    assert job.status == "ready", job.errors
    outputs = {o.preset: o for o in job.outputs}
    assert (outputs["mp4"].width, outputs["mp4"].height) == (1046, 576)  # 720 * 16/11, even
    assert (outputs["poster"].width, outputs["poster"].height) == (1046, 576)
    display = next(o for o in job.parts["poster"].outputs if o.preset == "display")
    assert (display.width, display.height) == (1046, 576)
    poster = pyvips.Image.new_from_buffer(await services.storage.get_bytes(outputs["poster"].key), "")
    assert poster.width == 1046


async def test_an_hdr_phone_video_comes_out_sdr_not_washed_out(services: Services, tmp_path: Path) -> None:
    """iPhones record HLG (BT.2020, 10-bit). The MP4 was 8-bit video still tagged HLG and the poster
    a JPEG of the HLG numbers: a red of (200, 30, 30) came out (141, 60, 39)."""
    source = _hlg_clip(tmp_path / "hlg.mov")
    assert probe(str(source)).video.hdr  # type: ignore[union-attr]
    await services.storage.put_bytes("uploads/hlg.mov", source.read_bytes())
    job = await run_asset(services, "uploads/hlg.mov", "hlg")

    assert job.status == "ready", job.errors
    outputs = {o.preset: o for o in job.outputs}
    poster = pyvips.Image.new_from_buffer(await services.storage.get_bytes(outputs["poster"].key), "")
    red, green, blue = (poster.extract_band(i).avg() for i in range(3))
    assert red > 170 and green < 35 and blue < 50, (red, green, blue)
    made = tmp_path / "made.mp4"
    made.write_bytes(await services.storage.get_bytes(outputs["mp4"].key))
    assert not probe(str(made)).video.hdr  # type: ignore[union-attr]


async def test_interlaced_camcorder_video_is_deinterlaced(services: Services, tmp_path: Path) -> None:
    """A 576i AVCHD-style clip (M2TS, fields 1/50 s apart): the MP4 came out with the two fields
    woven into each frame, combs on everything that moves (ffmpeg's idet: 50 of 50 frames TFF)."""
    extra = ["-vf", "tinterlace=mode=interleave_top,setfield=tff", "-flags", "+ildct+ilme", "-x264opts", "tff=1"]
    source = lavfi("mts", 2.0, size="720x576", rate=50, extra=extra)
    await services.storage.put_bytes("uploads/00001.MTS", source)
    job = await run_asset(services, "uploads/00001.MTS", "camcorder")

    assert job.status == "ready", job.errors
    outputs = {o.preset: o for o in job.outputs}
    assert (outputs["mp4"].width, outputs["mp4"].height, outputs["mp4"].fps) == (720, 576, 25.0)
    made = tmp_path / "made.mp4"
    made.write_bytes(await services.storage.get_bytes(outputs["mp4"].key))
    combed, progressive = _idet(made)
    assert progressive >= 40 and combed <= 5, (combed, progressive)





async def test_sound_that_starts_late_in_a_webm_is_not_taken_for_damage(services: Services) -> None:
    """WebM keeps no length per stream: the sound's (3 s, from 2 s on) was taken to be the whole
    file's 5 s, so its 3-s MP3 read as "damaged media: only 3.0 s of 5.0 s could be decoded"."""
    await services.storage.put_bytes("uploads/late.webm", lavfi("webm", 3.0, video_seconds=5.0,
                                                                 extra=["-af", "asetpts=PTS+2/TB"]))
    made = await transcode_file(Context(services, "transcode", None, 1), "uploads/late.webm", "mp3")
    assert made.duration == pytest.approx(3.0, abs=0.2)

def _hlg_clip(path: Path) -> Path:
    """1 s of red (200, 30, 30) as a phone stores HDR: HLG transfer, BT.2020, 10-bit, tagged."""
    subprocess.run([
        ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=0xC81E1E:size=320x240:duration=1,format=gbrp",
        "-vf", "zscale=tin=bt709:t=arib-std-b67:pin=bt709:p=bt2020:min=gbr:m=bt2020nc:npl=203,format=yuv420p10le",
        "-c:v", "libx264", "-preset", "ultrafast", "-color_primaries", "bt2020", "-color_trc", "arib-std-b67",
        "-colorspace", "bt2020nc", "-y", str(path)], check=True, capture_output=True, timeout=60)
    return path


def _idet(path: Path) -> tuple[int, int]:
    """ffmpeg's interlace detector over a file: (frames that look interlaced, progressive ones)."""
    run = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path), "-vf", "idet", "-f", "null", "-"],
                         capture_output=True, text=True, timeout=60, check=True)
    line = [line for line in run.stderr.splitlines() if "Multi frame detection" in line][-1]  # the last: all frames
    numbers = [int(word) for word in line.replace(":", " ").split() if word.isdigit()]
    tff, bff, progressive = numbers[-4:-1]
    return tff + bff, progressive
