"""Per-item export transforms end to end (real nats-server, real S3, real ffmpeg and libvips):
recordings exported "as MP3"/"as Opus", images as their 1600 px WebP display variant, each item
made by the transcode or variant stage; what a transform cannot apply to is listed in the manifest
with the reason, and the export still succeeds."""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path
from typing import Any

import av
import pyvips

from services import cleanup, samples, stages
from services.transcode import samples as media
from shared import bus
from shared import messages as m
from shared.jobs import Job
from shared.runtime import Services
from tests.helpers import download, eventually, export_event, final_job, running, zip_tools_accept

EXPORT_STAGES = ("upload", "chunk", "transcode", "variant", "finalize")  # the items fan out to transcode/variant


def export_stages() -> list:  # type: ignore[type-arg]
    return [stages.load(name) for name in EXPORT_STAGES]


async def export(services: Services, job_id: str, tmp_path: Path,
                 **request: object) -> tuple[Job, zipfile.ZipFile, dict[str, Any]]:
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event(job_id, **request))
        job: Job = await eventually(lambda: final_job(services, job_id), timeout=90)
    assert job.status == "ready", job.errors
    assert job.url is not None
    path = tmp_path / f"{job_id}.zip"
    await asyncio.to_thread(download, job.url, str(path))
    zip_tools_accept(str(path))
    archive = zipfile.ZipFile(path)
    return job, archive, json.loads(archive.read("manifest.json"))


def probe_audio(data: bytes, folder: Path, name: str) -> tuple[str, float, str]:
    """(container format, duration in seconds, audio codec) as PyAV reads them."""
    path = folder / name
    path.write_bytes(data)
    with av.open(str(path)) as container:
        assert container.duration is not None
        codec = container.streams.audio[0].codec_context.codec.canonical_name
        return container.format.name, container.duration / 1_000_000, codec


async def test_recordings_exported_as_mp3(services: Services, tmp_path: Path) -> None:
    durations = {"rec/a/song.wav": 1.5, "rec/b/song.flac": 1.0, "rec/c/talk.ogg": 2.0}
    made = await asyncio.gather(*(asyncio.to_thread(media.lavfi, key.rsplit(".", 1)[1], seconds)
                                  for key, seconds in durations.items()))
    for key, data in zip(durations, made, strict=True):
        await services.storage.put_bytes(key, data)
    await services.storage.put_bytes("rec/cover.jpg", samples.photo(320, 240))
    await services.storage.put_bytes("rec/notes.wav", b"not audio at all, just a text file\n" * 20)
    keys = [*durations, "rec/cover.jpg", "rec/notes.wav", "rec/gone.wav"]

    job, archive, manifest = await export(services, "exp-mp3", tmp_path, keys=keys, transform="mp3")

    assert job.transform == "mp3" and job.untransformed_count == 2 and job.missing == ["rec/gone.wav"]
    # both "song"s become song.mp3: names are made unique after the extension changed
    expected = {"song.mp3": "rec/a/song.wav", "song (1).mp3": "rec/b/song.flac", "talk.mp3": "rec/c/talk.ogg"}
    assert set(archive.namelist()) == {*expected, "README.txt", "manifest.json"}
    for name, key in expected.items():
        fmt, seconds, codec = probe_audio(archive.read(name), tmp_path, name.replace(" ", "_"))
        assert (fmt, codec) == ("mp3", "mp3"), name
        assert abs(seconds - durations[key]) <= 0.2, (name, seconds)
    entries = {e["name"]: e for e in manifest["files"]}
    assert {n: e["key"] for n, e in entries.items()} == expected
    assert all(e["output"].startswith("exports/exp-mp3/items/1/") and e["output"].endswith("/mp3.mp3")
               for e in entries.values())
    assert manifest["transform"] == "mp3"
    assert manifest["missing"] == [{"key": "rec/gone.wav", "name": "gone.mp3"}]
    untransformed = {e["key"]: e for e in manifest["untransformed"]}
    assert set(untransformed) == {"rec/cover.jpg", "rec/notes.wav"}
    assert untransformed["rec/cover.jpg"]["name"] == "cover.mp3"
    assert all(e["reason"] for e in untransformed.values())
    assert "not a readable audio/video file" in untransformed["rec/notes.wav"]["reason"]
    assert b"untransformed" in archive.read("README.txt")

    assert (await cleanup.sweep(services)).deleted == 3  # the archive holds them now
    assert await services.storage.list_keys("exports/exp-mp3/") == [job.exports[0].key]
    assert await services.storage.head("rec/a/song.wav") is not None  # the sources stay


async def test_opus_and_an_unknown_transform(services: Services, tmp_path: Path) -> None:
    await services.storage.put_bytes("voice/memo.m4a", await asyncio.to_thread(media.lavfi, "m4a", 1.0))
    job, archive, manifest = await export(services, "exp-opus", tmp_path, prefix="voice/", transform="opus")
    assert set(archive.namelist()) == {"memo.opus", "README.txt", "manifest.json"}
    fmt, seconds, codec = probe_audio(archive.read("memo.opus"), tmp_path, "memo.opus")
    assert (fmt, codec) == ("ogg", "opus") and abs(seconds - 1.0) <= 0.2
    assert manifest["untransformed"] == [] and job.untransformed_count == 0

    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-bad", keys=["voice/memo.m4a"],
                                                                     transform="flac"))
        bad = await eventually(lambda: final_job(services, "exp-bad"))
    assert bad.status == "failed" and "transform 'flac' is not available" in bad.errors[-1].reason
    assert "mp3, opus, display" in bad.errors[-1].reason


async def test_images_exported_as_display_webp_from_another_bucket(services: Services, tmp_path: Path) -> None:
    """Sources in another bucket: the outputs live in the export's bucket, and finalize reads
    each member from where the chunk stage recorded it."""
    other = "jetmedia-test-sources"
    client = services.storage.client
    try:
        await client.create_bucket(Bucket=other)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    await client.put_object(Bucket=other, Key="pics/wide.jpg", Body=samples.photo(2400, 1500))
    await client.put_object(Bucket=other, Key="pics/small.png", Body=samples.encoded("png", 800, 600))
    await client.put_object(Bucket=other, Key="pics/clip.wav", Body=await asyncio.to_thread(media.lavfi, "wav", 1.0))

    job, archive, manifest = await export(services, "exp-display", tmp_path, prefix="pics/", bucket=other,
                                          transform="display")

    assert set(archive.namelist()) == {"wide.webp", "small.webp", "README.txt", "manifest.json"}
    sizes = {}
    for name in ("wide.webp", "small.webp"):
        image = pyvips.Image.new_from_buffer(archive.read(name), "")
        assert image.get("vips-loader") == "webpload_buffer"
        sizes[name] = (image.width, image.height)
    assert sizes == {"wide.webp": (1600, 1000), "small.webp": (800, 600)}  # never upscaled
    outputs = {e["name"]: e["output"] for e in manifest["files"]}
    assert all(o.startswith("exports/exp-display/items/1/") and o.endswith("/display.webp") for o in outputs.values())
    assert await services.storage.head(outputs["wide.webp"]) is not None  # in the export's own bucket
    [skipped] = manifest["untransformed"]
    assert skipped["key"] == "pics/clip.wav" and skipped["name"] == "clip.webp"
    assert "not a supported image" in skipped["reason"]
    assert job.untransformed_count == 1
    for key in ("pics/wide.jpg", "pics/small.png", "pics/clip.wav"):
        await client.delete_object(Bucket=other, Key=key)
