"""Audio and video through the whole asset flow: upload -> transcode (-> variant for the poster)
-> finalize, on real media that ffmpeg generates (sine, testsrc2) in several containers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from services import stages
from services.transcode import transcode_file
from services.transcode.ffmpeg import ffmpeg_exe
from services.transcode.probe import Probe, probe
from services.transcode.samples import lavfi
from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.jobs import Job
from shared.runtime import Context, Reject, Services
from tests.helpers import eventually, final_job, run_asset, running, stream_events


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Fast encodes for tests; a temp root we can check is left empty."""
    return settings.replace(transcode_x264_preset="ultrafast", transcode_tmp_dir=str(tmp_path / "transcode"))


@pytest.mark.parametrize("container", ["wav", "flac", "ogg", "m4a", "aiff"])
async def test_audio_becomes_mp3_and_opus(services: Services, tmp_path: Path, container: str) -> None:
    await services.storage.put_bytes(f"uploads/song.{container}", lavfi(container, 2.0))
    job = await run_asset(services, f"uploads/song.{container}", f"song-{container}")

    assert job.status == "ready", job.errors
    assert job.media == "audio" and job.parts_needed == ["transcode"] and job.percent == 100.0
    outputs = {o.preset: o for o in job.outputs}
    assert set(outputs) == {"mp3", "opus"}
    assert outputs["mp3"].key == f"transcodes/song-{container}/mp3.mp3"
    for preset, codec in (("mp3", "mp3"), ("opus", "opus")):
        made = await _probe_stored(services, outputs[preset].key, tmp_path)
        assert made.video is None and made.audio is not None and made.audio.codec == codec
        assert made.duration == pytest.approx(2.0, abs=0.1)
        assert outputs[preset].audio_codec == codec and outputs[preset].duration == pytest.approx(2.0, abs=0.1)
        assert outputs[preset].bytes == len(await services.storage.get_bytes(outputs[preset].key))
    assert outputs["mp3"].bitrate and outputs["opus"].bitrate  # (a pure tone is cheap: ~40 kbit/s at V2)
    source = job.parts["transcode"].source
    assert source is not None and source.duration == pytest.approx(2.0, abs=0.1) and source.audio_codec
    assert os.listdir(tmp_path / "transcode") == []


@pytest.mark.parametrize("container", ["mov", "mkv", "webm", "mp4", "mts"])
async def test_video_becomes_faststart_mp4_and_a_poster_with_variants(
    services: Services, tmp_path: Path, container: str
) -> None:
    await services.storage.put_bytes(f"uploads/clip.{container}", lavfi(container, 2.0, size="320x240"))
    job = await run_asset(services, f"uploads/clip.{container}", f"clip-{container}")

    assert job.status == "ready", job.errors
    assert job.media == "video" and sorted(job.parts) == ["poster", "transcode"]
    outputs = {o.preset: o for o in job.outputs}
    mp4 = outputs["mp4"]
    assert mp4.key == f"transcodes/clip-{container}/mp4.mp4"
    assert (mp4.video_codec, mp4.audio_codec, mp4.width, mp4.height) == ("h264", "aac", 320, 240)
    data = await services.storage.get_bytes(mp4.key)
    boxes = _top_level_boxes(data)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart
    made = await _probe_stored(services, mp4.key, tmp_path)
    assert made.duration == pytest.approx(2.0, abs=0.1)
    assert made.video is not None and made.video.codec == "h264" and made.audio is not None

    assert outputs["poster"].key == f"transcodes/clip-{container}/poster.jpg"
    assert (outputs["poster"].width, outputs["poster"].height) == (320, 240)
    poster_variants = job.parts["poster"].outputs
    assert poster_variants and all(o.key.startswith(f"variants/clip-{container}/") for o in poster_variants)
    for out in job.outputs:
        assert await services.storage.head(out.key) is not None

    ready = [e for e in await stream_events(services, "JM_EVENTS") if isinstance(e, m.AssetReady)]
    assert [e.data.media for e in ready] == ["video"]
    assert os.listdir(tmp_path / "transcode") == []


async def test_big_and_fast_video_is_fitted_never_upscaled_and_webm_is_optional(
    services: Services, tmp_path: Path
) -> None:
    """Export-style use: transcode_file, one object, one preset. Caps: 240p box, 25 fps."""
    capped = services.settings.replace(transcode_max_height=240, transcode_max_fps=25.0)
    await services.storage.put_bytes("uploads/wide.mkv", lavfi("mkv", 1.0, size="640x360", rate=50))
    await services.storage.put_bytes("uploads/small.mov", lavfi("mov", 1.0, size="160x120"))
    await services.storage.put_bytes("uploads/tall.mp4", lavfi("mp4", 1.0, size="360x640"))
    ctx = Context(_with_settings(services, capped), "transcode", None, 1)

    wide = await transcode_file(ctx, "uploads/wide.mkv", "mp4")
    assert (wide.width, wide.height, wide.fps) == (426, 240, 25.0)
    small = await transcode_file(ctx, "uploads/small.mov", "mp4", key="exports/x/small.mp4")
    assert (small.key, small.width, small.height) == ("exports/x/small.mp4", 160, 120)
    tall = await transcode_file(ctx, "uploads/tall.mp4", "mp4")
    assert (tall.width, tall.height) == (240, 426)
    webm = await transcode_file(ctx, "uploads/small.mov", "webm")
    assert (webm.video_codec, webm.audio_codec) == ("vp9", "opus") and webm.key.endswith("/webm.webm")
    mp3 = await transcode_file(ctx, "uploads/wide.mkv", "mp3")  # the sound of a video, as MP3
    assert (mp3.audio_codec, mp3.video_codec) == ("mp3", None)
    assert mp3.duration == pytest.approx(1.0, abs=0.1)

    # a phone video: stored 320x180 with a 90° display rotation -> upright 180x320
    await services.storage.put_bytes("uploads/rotated.mp4", _rotated_90(tmp_path, "320x180"))
    rotated = await transcode_file(ctx, "uploads/rotated.mp4", "mp4")
    assert (rotated.width, rotated.height) == (180, 320)


async def test_an_mp4_with_only_sound_is_transcoded_as_audio_without_a_poster(services: Services) -> None:
    await services.storage.put_bytes("uploads/voice.mp4", lavfi("mp4", 1.0, video=False))
    job = await run_asset(services, "uploads/voice.mp4", "voice")

    assert job.status == "ready", job.errors
    assert job.media == "audio"  # upload's guess from the `ftyp` box was video; the probe decided
    assert sorted(o.preset for o in job.outputs) == ["mp3", "opus"]
    assert job.parts["poster"].outputs == []


async def test_limits_are_permanent_and_specific(services: Services) -> None:
    strict = services.settings.replace(transcode_max_duration=1.5, transcode_max_dimension=200)
    ctx = Context(_with_settings(services, strict), "transcode", None, 1)
    await services.storage.put_bytes("uploads/long.wav", lavfi("wav", 2.0))
    await services.storage.put_bytes("uploads/big.mov", lavfi("mov", 1.0, size="320x240"))
    with pytest.raises(Reject, match=r"2\.0 s long, over the limit of 2 s|over the limit of"):
        await transcode_file(ctx, "uploads/long.wav", "mp3")
    with pytest.raises(Reject, match="video is 320x240, over the limit of 200 px"):
        await transcode_file(ctx, "uploads/big.mov", "mp4")
    with pytest.raises(Reject, match="needs a video stream"):
        await transcode_file(Context(services, "transcode", None, 1), "uploads/long.wav", "mp4")


async def test_a_missing_or_oversized_source_is_refused_by_its_get(services: Services) -> None:
    """One GET, no HEAD before it: the answer's status and Content-Length decide."""
    wav = lavfi("wav", 1.0)
    await services.storage.put_bytes("uploads/tone.wav", wav)
    strict = services.settings.replace(max_source_bytes=len(wav) - 1)
    with pytest.raises(Reject, match=f"source is {len(wav)} bytes, over the limit of {len(wav) - 1}"):
        await transcode_file(Context(_with_settings(services, strict), "transcode", None, 1), "uploads/tone.wav", "mp3")
    ctx = Context(services, "transcode", None, 1)
    with pytest.raises(Reject, match=r"source object s3://.*/uploads/nothing\.wav does not exist"):
        await transcode_file(ctx, "uploads/nothing.wav", "mp3")
    with pytest.raises(Reject, match="does not exist"):
        await transcode_file(ctx, "uploads/tone.wav", "mp3", bucket="jetmedia-no-such-bucket")
    assert (await transcode_file(ctx, "uploads/tone.wav", "mp3")).duration == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("truncated.mp4", "truncated", "not a readable audio/video file"),
        ("cut-short.mp4", "cut-short", "damaged media: only 0."),
        ("noise.wav", b"RIFF\x24\x00\x00\x00WAVE" + b"this is not audio at all " * 20, "not a readable audio/video"),
        ("text.mp3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"plain text, no frames\n" * 40, "not a readable"),
    ],
)
async def test_corrupt_and_non_media_files_fail_once_with_the_reason(
    services: Services, name: str, content: bytes | str, reason: str
) -> None:
    if content == "truncated":  # an MP4 cut in half: its moov atom (at the end) is gone
        whole = lavfi("mp4", 2.0)
        content = whole[: len(whole) // 2]
    elif content == "cut-short":  # moov first (faststart), media data cut: probes fine, decodes 0.8 s
        whole = lavfi("mp4", 2.0, extra=["-movflags", "+faststart"])
        content = whole[: int(len(whole) * 0.4)]
    assert isinstance(content, bytes)
    await services.storage.put_bytes(f"uploads/{name}", content)
    job = await run_asset(services, f"uploads/{name}", "bad")

    assert job.status == "failed" and job.errors[-1].stage == "transcode"
    assert reason in job.errors[-1].reason, job.errors
    letters = await eventually(lambda: stream_events(services, "JM_DLQ"))
    assert len(letters) == 1 and isinstance(letters[0], m.DeadLetter)
    assert letters[0].data.stage == "transcode" and letters[0].data.permanent
    assert letters[0].data.delivery_count == 1
    assert await services.storage.list_keys("transcodes/") == []


@pytest.mark.parametrize(
    "playlist",
    [
        b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nhttp://127.0.0.1:9/segment.ts\n#EXT-X-ENDLIST\n",
        b"ffconcat version 1.0\nfile 'http://127.0.0.1:9/a.mp4'\n",
        b"\xef\xbb\xbf#EXTM3U\n#EXTINF:2,\nfile:///etc/passwd\n",
    ],
)
async def test_playlists_pointing_elsewhere_are_refused(services: Services, playlist: bytes) -> None:
    """Upload would not route these (no magic number); the transcode stage refuses them anyway,
    for producers that publish transcode requests directly."""
    await services.storage.put_bytes("uploads/list.m3u8", playlist)
    await services.jobs.create(_job("hls"))
    request = m.TranscodeRequested(
        id="hls-1", time=m.now(), subject="hls",
        data=m.TranscodeRequestedData(job="hls", asset="hls", bucket=services.settings.bucket, key="uploads/list.m3u8"),
    )
    async with running(services, [stages.load("transcode")]):
        await bus.publish(services.js, m.TRANSCODE, request)
        job = await eventually(lambda: final_job(services, "hls"))
    assert job.status == "failed"
    assert "not accepted" in job.errors[-1].reason, job.errors


# --- helpers ------------------------------------------------------------------------------




async def _probe_stored(services: Services, key: str, tmp_path: Path) -> Probe:
    path = tmp_path / key.replace("/", "_")
    path.write_bytes(await services.storage.get_bytes(key))
    return probe(str(path), path.stat().st_size)


def _top_level_boxes(data: bytes) -> list[str]:
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        kind = data[offset + 4:offset + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        boxes.append(kind)
        if size < 8:
            break
        offset += size
    return boxes


def _rotated_90(tmp_path: Path, size: str) -> bytes:
    """A clip as phones store portrait video: landscape pixels plus a display rotation."""
    stored, rotated = tmp_path / "stored.mp4", tmp_path / "rotated.mp4"
    stored.write_bytes(lavfi("mp4", 1.0, size=size))
    subprocess.run([ffmpeg_exe(), "-v", "error", "-display_rotation", "90", "-i", str(stored), "-c", "copy",
                    "-y", str(rotated)], check=True)
    return rotated.read_bytes()


def _with_settings(services: Services, settings: Settings) -> Services:
    other = Services(settings, services.nc, services.js, services.jobs, services.storage)
    return other


def _job(job_id: str) -> Job:
    from shared.jobs import new_job

    return new_job(job_id, "asset", status="running", stage="transcode", media="video",
                   parts_needed=["transcode", "poster"], total=2)
