"""The README's first example, as a test: upload a photo, publish one event, get variants."""

from __future__ import annotations

import msgspec
import pytest
import pyvips

from services import samples, stages
from shared import bus
from shared import messages as m
from shared.jobs import JobStore, new_job
from shared.runtime import Services
from tests.helpers import asset_event, eventually, running, stream_events


async def test_photo_becomes_ready_with_webp_in_s3(services: Services) -> None:
    await services.storage.put_bytes("uploads/cat.jpg", samples.photo(1600, 1200))
    event = asset_event("uploads/cat.jpg", event_id="cat-1")

    async with running(services, stages.load_all()):
        await bus.publish(services.js, m.UPLOAD_ASSET, event)
        job = await eventually(lambda: _final(services, "cat-1"))

    assert job.status == "ready", job.errors
    assert job.media == "image" and job.done == job.total == 1
    thumb = next(o for o in job.outputs if o.preset == "thumb")
    assert thumb.key == "variants/cat-1/thumb.webp"
    stored = pyvips.Image.new_from_buffer(await services.storage.get_bytes(thumb.key), "")
    assert (stored.width, stored.height) == (400, 300) == (thumb.width, thumb.height)
    assert stored.get("vips-loader").startswith("webpload")

    ready = [e for e in await stream_events(services, "JM_EVENTS") if isinstance(e, m.AssetReady)]
    assert [e.data.job for e in ready] == ["cat-1"]
    assert ready[0].data.outputs == job.outputs


async def test_unknown_bytes_fail_with_reason_in_kv_and_dlq(services: Services) -> None:
    await services.storage.put_bytes("uploads/notes.jpg", b"plain text, not a JPEG")
    async with running(services, stages.load_all()):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event("uploads/notes.jpg", event_id="notes"))
        job = await eventually(lambda: _final(services, "notes"))
        letters = await eventually(lambda: stream_events(services, "JM_DLQ"))

    assert job.status == "failed"
    assert "unsupported file type" in job.errors[-1].reason
    assert len(letters) == 1 and isinstance(letters[0], m.DeadLetter)
    assert letters[0].data.stage == "upload" and letters[0].data.permanent


async def test_missing_source_object_fails_clearly(services: Services) -> None:
    async with running(services, stages.load_all()):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event("uploads/ghost.jpg", event_id="ghost"))
        job = await eventually(lambda: _final(services, "ghost"))
    assert job.status == "failed"
    assert "does not exist" in job.errors[-1].reason


@pytest.mark.parametrize(("case", "data", "reason"), [
    ("empty", b"", "is empty (0 bytes)"),  # S3 answers a range of an empty object with 416
    ("big", b"\xff\xd8\xff\xe0" + bytes(20_000), "source is 20004 bytes, over the limit of 20000"),
])
async def test_empty_or_too_big_source_fails_at_upload_from_one_ranged_get(
        services: Services, case: str, data: bytes, reason: str) -> None:
    """The upload reads the size from its sniffing GET's Content-Range (no HEAD first)."""
    services.settings = services.settings.replace(max_source_bytes=20_000)
    await services.storage.put_bytes(f"uploads/{case}.jpg", data)
    async with running(services, [stages.load("upload")]):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(f"uploads/{case}.jpg", event_id=f"up-{case}"))
        job = await eventually(lambda: _final(services, f"up-{case}"))
    assert job.status == "failed" and job.errors[-1].stage == "upload"
    assert reason in job.errors[-1].reason


async def _final(services: Services, job_id: str):  # type: ignore[no-untyped-def]
    job = await services.jobs.get(job_id)
    return job if job is not None and job.final else None


async def test_a_remembered_record_never_hides_another_writers_change(services: Services) -> None:
    """JobStore.update starts from the record it wrote last instead of reading it back; another
    process (here a second store on the same bucket) may have written since: its change stays."""
    mine, other = services.jobs, JobStore(services.jobs.kv, services.js)
    await mine.create(new_job("memo", "asset", status="running"))  # `mine` remembers this record
    await other.update("memo", lambda job: msgspec.structs.replace(job, done=job.done + 1))

    job = await mine.update("memo", lambda job: msgspec.structs.replace(job, bytes=job.bytes + 10))
    assert (job.done, job.bytes) == (1, 10)  # the stale copy's write was refused, the bucket's record used

    await other.update("memo", lambda job: msgspec.structs.replace(job, status="failed"))
    job = await mine.update(  # a no-op on the remembered copy (still running) is checked on a read
        "memo", lambda job: job if job.status == "running" else msgspec.structs.replace(job, attempt=2))
    assert (job.status, job.attempt, job.done, job.bytes) == ("failed", 2, 1, 10)
    stored = await services.jobs.get("memo")
    assert stored is not None and (stored.status, stored.attempt) == ("failed", 2)
