"""What the API says about a job: `JobView`, the job record as a web client needs it.

The KV record (shared/jobs.py) is the truth; the view adds what a browser cannot make itself
(presigned GET URLs for the outputs, one overall `percent`) and leaves out the bookkeeping
(chunk counters, the outbox). Fields are only ever added (clients ignore unknown ones).
"""

from __future__ import annotations

import asyncio
import posixpath
from datetime import datetime

import msgspec

from shared.jobs import Job, fraction
from shared.storage import Storage

CONTENT_TYPES = {
    ".webp": "image/webp", ".avif": "image/avif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
    ".gif": "image/gif", ".mp3": "audio/mpeg", ".opus": "audio/ogg", ".ogg": "audio/ogg", ".m4a": "audio/mp4",
    ".mp4": "video/mp4", ".webm": "video/webm", ".zip": "application/zip", ".json": "application/json",
}


class OutputView(msgspec.Struct, kw_only=True, frozen=True):
    name: str  # the preset (assets) or the archive file name (exports)
    key: str
    url: str | None  # presigned GET
    content_type: str
    bytes: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None


class JobView(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    kind: str
    status: str  # queued, running, ready, failed, cancelled, expired
    stage: str
    percent: float  # 0-100, overall (100 once final)
    error: str | None  # the last error ("stage: reason") of a failed or cancelled job
    created: datetime
    updated: datetime
    outputs: list[OutputView]
    download_url: str | None = None  # exports: the archive (or the index of its parts)
    media: str | None = None  # assets: image, audio, video
    source_key: str | None = None
    attempt: int = 1
    expires: datetime | None = None  # exports: when the download stops working
    files: int | None = None  # exports: files in the archive so far (or in all)


class JobList(msgspec.Struct, kw_only=True, frozen=True):
    jobs: list[JobView]
    dead_letters: int  # letters in JM_DLQ now (all jobs, not only these)


def content_type(key: str) -> str:
    return CONTENT_TYPES.get(posixpath.splitext(key)[1].lower(), "application/octet-stream")


async def job_view(job: Job, storage: Storage) -> JobView:
    """The view of a record; output URLs are presigned here (local signing, no S3 round trip)."""
    outputs: list[OutputView] = []
    if job.kind == "asset":
        urls = await asyncio.gather(*(storage.presign(out.key) for out in job.outputs)) if job.status == "ready" else []
        for i, out in enumerate(job.outputs):
            outputs.append(OutputView(
                name=out.preset, key=out.key, url=urls[i] if urls else None, content_type=content_type(out.key),
                bytes=out.bytes, format=out.format, width=out.width, height=out.height, duration=out.duration))
    else:
        for part in job.exports:
            outputs.append(OutputView(name=part.name, key=part.key, url=part.url if job.status == "ready" else None,
                                      content_type=content_type(part.key), bytes=part.bytes, format="zip"))
    error = None
    if job.errors and job.status in ("failed", "cancelled"):
        error = f"{job.errors[-1].stage}: {job.errors[-1].reason}"
    return JobView(
        id=job.id, kind=job.kind, status=job.status, stage=job.stage, percent=round(100 * fraction(job), 1),
        error=error, created=job.created, updated=job.updated, outputs=outputs,
        download_url=job.url if job.kind == "export" and job.status == "ready" else None,
        media=job.media, source_key=job.source_key, attempt=job.attempt, expires=job.expires,
        files=(job.archived or job.done) if job.kind == "export" else None,
    )


def queued_view(job_id: str, kind: str, at: datetime, key: str | None) -> JobView:
    """A job the gateway accepted whose record the upload stage has not made yet."""
    return JobView(id=job_id, kind=kind, status="queued", stage="upload", percent=0.0, error=None, created=at,
                   updated=at, outputs=[], source_key=key)
