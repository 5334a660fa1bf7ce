"""The variant stage on the real runtime, nats-server and S3: what lands in S3 and in the job record."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import pyvips

from services import samples, stages
from services.variant import thumbhash
from shared import bus
from shared import messages as m
from shared.jobs import Job, new_job
from shared.runtime import Services
from tests.helpers import asset_event, eventually, final_job, running, stream_events


async def _image(services: Services, key: str) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(await services.storage.get_bytes(key), "")


async def test_photo_gets_thumb_display_colours_and_placeholder(services: Services) -> None:
    await services.storage.put_bytes("uploads/beach.jpg", samples.photo(3000, 2000))
    async with running(services, stages.load_all()):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event("uploads/beach.jpg", event_id="beach"))
        job = await eventually(lambda: final_job(services, "beach"), timeout=60)

    assert job.status == "ready", job.errors
    part = job.parts["variant"]
    assert part.source is not None
    assert (part.source.format, part.source.width, part.source.height) == ("jpeg", 3000, 2000)
    assert part.source.bytes == len(await services.storage.get_bytes("uploads/beach.jpg"))
    assert [(o.preset, o.key, o.format, o.width, o.height) for o in part.outputs] == [
        ("thumb", "variants/beach/thumb.webp", "webp", 400, 267),
        ("display", "variants/beach/display.webp", "webp", 1600, 1067),
    ]
    for out in part.outputs:
        stored = await _image(services, out.key)
        assert (stored.width, stored.height) == (out.width, out.height)
        assert stored.get("vips-loader") == "webpload_buffer"
        assert out.bytes == len(await services.storage.get_bytes(out.key))
    assert 1 <= len(part.colours) <= 5 and all(len(c) == 7 and c[0] == "#" for c in part.colours)
    assert part.placeholder is not None
    assert thumbhash.aspect_ratio(thumbhash.from_text(part.placeholder)) == pytest.approx(1.5, rel=0.3)

    ready = [e for e in await stream_events(services, "JM_EVENTS") if isinstance(e, m.AssetReady)]
    assert [o.key for o in ready[0].data.outputs] == ["variants/beach/thumb.webp", "variants/beach/display.webp"]


async def test_producer_picks_presets_including_optional_avif(services: Services) -> None:
    await services.storage.put_bytes("uploads/logo.png", samples.png_with_alpha(1800, 1200))
    event = asset_event("uploads/logo.png", event_id="logo", presets=["display-avif", "thumb"])
    async with running(services, stages.load_all()):
        await bus.publish(services.js, m.UPLOAD_ASSET, event)
        job = await eventually(lambda: final_job(services, "logo"), timeout=60)

    assert job.status == "ready", job.errors
    assert [(o.preset, o.key, o.format) for o in job.outputs] == [
        ("display-avif", "variants/logo/display-avif.avif", "avif"),
        ("thumb", "variants/logo/thumb.webp", "webp"),
    ]
    avif = await _image(services, "variants/logo/display-avif.avif")
    assert avif.get("vips-loader") == "heifload_buffer" and avif.hasalpha() and avif.width == 1600
    assert sorted(await services.storage.list_keys("variants/logo/")) == [
        "variants/logo/display-avif.avif", "variants/logo/thumb.webp",
    ]


async def test_presets_come_from_the_environment(services: Services) -> None:
    services.settings = services.settings.replace(variant_presets="square:jpeg:128:q70")
    await services.storage.put_bytes("uploads/tiny.jpg", samples.photo(640, 480))
    async with running(services, stages.load_all()):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event("uploads/tiny.jpg", event_id="tiny"))
        job = await eventually(lambda: final_job(services, "tiny"), timeout=60)
    assert job.status == "ready", job.errors
    assert [(o.key, o.width, o.height) for o in job.outputs] == [("variants/tiny/square.jpg", 128, 96)]


async def _start_job(services: Services, job_id: str, parts: list[str]) -> None:
    job = new_job(job_id, "asset", status="running", stage="variant", asset=job_id, media="image",
                  parts_needed=parts, total=len(parts))
    await services.jobs.create(job)


def _request(job_id: str, key: str, *, part: str = "variant", presets: list[str] | None = None,
             event_id: str | None = None) -> m.VariantRequested:
    return m.VariantRequested(
        id=event_id or m.derived_id(job_id, "variant", job_id), source="test", time=m.now(), subject=job_id,
        data=m.VariantRequestedData(job=job_id, asset=job_id, bucket="jetmedia-test", key=key, part=part,
                                    presets=presets),
    )


BAD_INPUTS = {
    "truncated": (lambda: samples.photo(1600, 1200)[:40_000], None, "cannot decode jpeg image: VipsJpeg: premature"),
    "bomb": (lambda: samples.png_bomb(50_000, 50_000), None, "50000×50000 = 2500.0 MP, over the limit"),
    "empty": (lambda: b"", None, "is empty (0 bytes)"),
    "missing": (None, None, "does not exist"),
    "not-an-image": (lambda: b"%PDF-1.7 not an image at all", None, "not a supported image"),
    "unknown-preset": (lambda: samples.photo(64, 64), ["poster-huge"], "unknown variant preset(s) poster-huge"),
    "damaged-heic": (lambda: samples.hevc_heif(), None, "cannot decode heif image: "),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_fails_the_job_once_with_the_reason(services: Services, case: str) -> None:
    make, presets, reason = BAD_INPUTS[case]
    key = f"uploads/{case}.bin"
    if make is not None:
        await services.storage.put_bytes(key, make())
    await _start_job(services, case, ["variant"])
    async with running(services, [stages.load("variant"), stages.load("finalize")]):
        await bus.publish(services.js, m.VARIANT, _request(case, key, presets=presets))
        job = await eventually(lambda: final_job(services, case), timeout=30)
        letters = await eventually(lambda: stream_events(services, "JM_DLQ"))

    assert job.status == "failed" and job.stage == "variant"
    assert reason in job.errors[-1].reason
    assert len(letters) == 1 and isinstance(letters[0], m.DeadLetter)
    assert letters[0].data.permanent and letters[0].data.delivery_count == 1  # no retries for bad input
    assert letters[0].data.stage == "variant" and reason in letters[0].data.error
    assert await services.storage.list_keys(f"variants/{case}/") == []


async def test_source_over_the_byte_limit_is_refused_without_reading_it_all(services: Services) -> None:
    services.settings = services.settings.replace(max_image_bytes=10_000)
    await services.storage.put_bytes("uploads/big.png", samples.encoded("png", 800, 600))
    await _start_job(services, "big", ["variant"])
    async with running(services, [stages.load("variant")]):
        await bus.publish(services.js, m.VARIANT, _request("big", "uploads/big.png"))
        job = await eventually(lambda: final_job(services, "big"), timeout=30)
    assert job.status == "failed"
    assert "over the limit of 10000 bytes" in job.errors[-1].reason


async def test_video_poster_frame_is_a_part_of_its_own(services: Services) -> None:
    await services.storage.put_bytes("frames/clip.jpg", samples.photo(1920, 1080))
    await _start_job(services, "clip", ["transcode", "poster"])
    async with running(services, [stages.load("variant"), stages.load("finalize")]):
        await bus.publish(services.js, m.VARIANT, _request("clip", "frames/clip.jpg", part="poster"))
        job = await eventually(lambda: _poster_done(services, "clip"), timeout=30)

    assert job.status == "running" and job.done == 1  # still waiting for the transcode part
    poster = job.parts["poster"]
    assert [(o.preset, o.width, o.height) for o in poster.outputs] == [("thumb", 400, 225), ("display", 1600, 900)]
    assert poster.source is not None and poster.source.width == 1920
    assert poster.placeholder and poster.colours


async def _poster_done(services: Services, job_id: str) -> Job | None:
    job = await services.jobs.get(job_id)
    return job if job is not None and "poster" in job.parts else None


async def test_rerun_overwrites_the_same_keys_and_reports_once(services: Services) -> None:
    await services.storage.put_bytes("uploads/again.jpg", samples.photo(1200, 800))
    await _start_job(services, "again", ["variant"])
    async with running(services, [stages.load("variant")]):
        first = _request("again", "uploads/again.jpg")
        await bus.publish(services.js, m.VARIANT, first)
        await eventually(lambda: _stored(services, "JM_FINALIZE"))
        # the same work asked again (a replay with a new id): same keys, same PartDone id
        await bus.publish(services.js, m.VARIANT, msgspec.structs.replace(first, id="again-replayed"))
        await eventually(lambda: _consumer_idle(services, "JM_VARIANT", "variant"))

    assert sorted(await services.storage.list_keys("variants/again/")) == [
        "variants/again/display.webp", "variants/again/thumb.webp",
    ]
    # finalize is not running, so its work queue holds what variant sent: one PartDone, because the
    # second had the same derived id and the server dropped it
    assert await _stored(services, "JM_FINALIZE") == 1
    raw = await services.js.get_msg("JM_FINALIZE", 1)
    assert isinstance(m.decode(raw.data or b""), m.PartDone)


async def _stored(services: Services, stream: str) -> int:
    return int((await services.js.stream_info(stream)).state.messages)


async def _consumer_idle(services: Services, stream: str, durable: str) -> bool:
    info = await services.js.consumer_info(stream, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq >= 2


async def test_many_images_at_once_all_finish(services: Services) -> None:
    names = [f"batch-{i}" for i in range(12)]
    for i, name in enumerate(names):
        await services.storage.put_bytes(f"uploads/{name}.jpg", samples.photo(1600, 1200, seed=i))
    async with running(services, stages.load_all()):
        await asyncio.gather(*(
            bus.publish(services.js, m.UPLOAD_ASSET, asset_event(f"uploads/{name}.jpg", event_id=name))
            for name in names
        ))
        jobs = [await eventually(lambda n=name: final_job(services, n), timeout=90) for name in names]  # type: ignore[misc]
    assert all(job.status == "ready" for job in jobs), [j.errors for j in jobs]
    assert len(await services.storage.list_keys("variants/")) == 2 * len(names)
