"""cleanup: deletes exports whose download window has passed, and marks their jobs `expired`.

Periodic rather than a consumer: nothing sends it messages, time does. Every sweep reads what is
actually stored under `exports/` (S3 is the truth about what costs money), looks up each job and
deletes the archives of jobs that expired (announced with `jetmedia.job.expired.v1`), failed or
were cancelled, plus multipart uploads a crashed or cancelled writer left open. Sweeps are
idempotent, so any number of replicas may run one (`jetmedia worker cleanup`, or `jetmedia up` which runs everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from shared.exportplan import chunk_key
from shared.jobs import Job
from shared.runtime import Services, announcements

log = logging.getLogger("jetmedia.cleanup")

PREFIX = "exports/"
ORPHAN_AGE = timedelta(days=1)  # exports/ objects of unknown jobs are deleted after this


@dataclass
class Swept:
    expired: int = 0  # jobs moved to `expired`
    deleted: int = 0  # objects deleted
    aborted: int = 0  # multipart uploads aborted


async def sweep(services: Services, now: datetime | None = None) -> Swept:
    """One pass; `now` is a parameter so tests can move the clock (moto ignores URL expiry)."""
    now = now or datetime.now(UTC)
    storage = services.storage
    swept = Swept()
    objects: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    paginator = storage.client.get_paginator("list_objects_v2")
    page: dict[str, Any]
    async for page in paginator.paginate(Bucket=storage.bucket, Prefix=PREFIX):
        for item in page.get("Contents", []):
            job_id = item["Key"][len(PREFIX):].split("/", 1)[0]
            objects[job_id].append((item["Key"], item["LastModified"]))

    for job_id, stored in objects.items():
        job = await services.jobs.get(job_id)
        if job is None:
            doomed = [key for key, modified in stored if modified + ORPHAN_AGE <= now]
        elif _expired(job, now):
            doomed = [key for key, _ in stored]
        elif job.status in ("failed", "cancelled", "expired"):
            doomed = [key for key, _ in stored]
        else:
            continue
        for key in doomed:
            await storage.delete(key)
        swept.deleted += len(doomed)
        if job is not None and _expired(job, now):
            await _expire(services, job)
            swept.expired += 1

    resp = await storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=PREFIX)
    for upload in resp.get("Uploads", []):
        job_id = upload["Key"][len(PREFIX):].split("/", 1)[0]
        job = await services.jobs.get(job_id)
        stale = upload["Initiated"] + ORPHAN_AGE <= now
        if (job is None and stale) or (job is not None and job.final):
            with contextlib.suppress(Exception):
                await storage.client.abort_multipart_upload(
                    Bucket=storage.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                swept.aborted += 1
    if swept.expired or swept.deleted or swept.aborted:
        log.info("cleanup: %d export(s) expired, %d object(s) deleted, %d upload(s) aborted",
                 swept.expired, swept.deleted, swept.aborted)
    return swept


def _expired(job: Job, now: datetime) -> bool:
    return job.kind == "export" and job.status == "ready" and job.expires is not None and job.expires <= now


async def _expire(services: Services, job: Job) -> None:
    def expire(current: Job) -> Job:
        if current.status != "ready":
            return current
        return msgspec.structs.replace(current, status="expired", url=None, exports=[
            msgspec.structs.replace(part, url=None) for part in current.exports
        ])

    expired = await services.jobs.update(job.id, expire)
    await services.send(announcements(expired, services.settings))  # `job.expired`, once (shared/outbox.py)
    for n in range(job.chunks):  # the per-chunk detail is not needed any more
        with contextlib.suppress(Exception):
            await services.jobs.kv.purge(chunk_key(job.id, n))


async def run(services: Services, stopping: asyncio.Event) -> None:
    """Sweep every `cleanup_interval` seconds until `stopping`."""
    interval = services.settings.cleanup_interval
    log.info("cleanup: sweeping %s every %.0fs", PREFIX, interval)
    while not stopping.is_set():
        try:
            await sweep(services)
        except Exception:
            log.exception("cleanup: sweep failed; trying again in %.0fs", interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
