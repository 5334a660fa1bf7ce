"""cleanup: deletes exports whose download window has passed, and marks their jobs `expired`.

Periodic rather than a consumer: nothing sends it messages, time does. Every sweep reads what is
actually stored under `exports/` (S3 is the truth about what costs money), looks up each job and
deletes the archives of jobs that expired (announced with `jetmedia.job.expired.v1`), failed or
were cancelled, plus multipart uploads a crashed or cancelled writer left open. Sweeps are
idempotent, so any number of replicas may run one (`jetmedia worker cleanup`, or `jetmedia up` which runs everything).

An expired export's archive is deleted only once `job.expired` is out: while it is stored, every
sweep comes back to the job, so a publish the events stream refused is retried. The sweep is also
the outbox's safety net (shared/outbox.py): a job that ended while the events stream was down
through every delivery of its last message would otherwise wait for a message that may never
come; a record final for longer than `ANNOUNCE_GRACE` without its final event in `announced` gets
it published here, with the same derived id.

An export's transforms put their outputs in its own folder (`exports/{job}/items/`); once the job
is ready the archive holds them, and the sweep deletes the folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from shared.exportitems import outputs_folder
from shared.exportplan import ARCHIVES, chunk_key
from shared.jobs import Job, scan_records
from shared.outbox import announcement as outbox_announcement
from shared.runtime import Services, announcements

log = logging.getLogger("jetmedia.cleanup")

PREFIX = ARCHIVES
ORPHAN_AGE = timedelta(days=1)  # exports/ objects of unknown jobs are deleted after this
# a final record older than this without its event was given up on by the runtime, which
# publishes then marks within milliseconds: announcing sooner would only race it
ANNOUNCE_GRACE = timedelta(seconds=30)


@dataclass
class Swept:
    expired: int = 0  # jobs moved to `expired`
    deleted: int = 0  # objects deleted
    aborted: int = 0  # multipart uploads aborted
    announced: int = 0  # final events published (`job.expired`, and ones the runtime never got out)


async def sweep(services: Services, now: datetime | None = None, known: Known | None = None) -> Swept:
    """One pass; `now` is a parameter so tests can move the clock (expiry is days away). `known`:
    what the previous passes read of the jobs bucket (None: read it all)."""
    now = now or datetime.now(UTC)
    known = known or Known()
    unannounced = await _read_jobs(services, known)
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
        elif _expired(job, now) or job.status in ("failed", "cancelled", "expired"):
            doomed = [key for key, _ in stored]
        elif job.status == "ready":  # its archive holds the transforms' outputs now
            doomed = [key for key, _ in stored if key.startswith(outputs_folder(job_id))]
        else:
            continue
        if job is not None and (_expired(job, now) or job.status == "expired"):
            swept.expired += job.status == "ready"
            try:
                swept.announced += await _expire(services, job)
            except Exception as exc:  # the archive stays: the next sweep comes back to this job
                log.warning("cleanup: job.expired of %s not published (%s); trying again next sweep", job_id, exc)
                continue
        for key in doomed:
            await storage.delete(key)
        swept.deleted += len(doomed)

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
    swept.announced += await _announce_unannounced(services, now, known, unannounced)
    if swept.expired or swept.deleted or swept.aborted or swept.announced:
        log.info("cleanup: %d export(s) expired, %d object(s) deleted, %d upload(s) aborted, %d event(s) announced",
                 swept.expired, swept.deleted, swept.aborted, swept.announced)
    return swept


def _expired(job: Job, now: datetime) -> bool:
    return job.kind == "export" and job.status == "ready" and job.expires is not None and job.expires <= now


async def _expire(services: Services, job: Job) -> int:
    """ready -> expired (no change if a replica got there first), then `job.expired`, once
    (shared/outbox.py). Raises when the publish fails, before the caller deletes the archive."""
    def expire(current: Job) -> Job:
        if current.status != "ready":
            return current
        return msgspec.structs.replace(current, status="expired", url=None, exports=[
            msgspec.structs.replace(part, url=None) for part in current.exports
        ])

    expired = await services.jobs.update(job.id, expire)
    published = await _announce(services, expired)
    for n in range(job.chunks):  # the per-chunk detail is not needed any more
        with contextlib.suppress(Exception):
            await services.jobs.kv.purge(chunk_key(job.id, n))
    return published


async def _announce(services: Services, job: Job) -> int:
    """Publish the final event `job`'s record calls for, then mark it (the outbox order). The mark
    is dropped if the job moved on meanwhile (a re-run started): the marker belongs to the
    attempt that was announced, not to the new one (whose id differs: `{job}:failed:2`)."""
    emits = announcements(job, services.settings)
    for emit in emits:
        await services.publish(emit)
        await services.jobs.update(job.id, _marking(job, emit.announces or ""))
    return len(emits)


def _marking(announced: Job, marker: str) -> Callable[[Job], Job]:
    def mark(current: Job) -> Job:
        if current.attempt != announced.attempt or current.status != announced.status or marker in current.announced:
            return current
        return msgspec.structs.replace(current, announced=[*current.announced, marker])

    return mark


@dataclass
class Known:
    """What the sweeps read of the jobs bucket, and where the next read starts. Records are kept
    for good, so reading every one each minute grew with every job ever run (20,000 jobs: 2.1 s a
    sweep by keys and gets, 0.3 s by one read of the stream, ~10 ms from `since`). With history 1
    a record's only message is its latest write, and a record that changes (becomes final, is
    marked announced) is written again at the stream's end: a record read once needs no second
    look until its next write. So a pass reads from `since` on, and moves `since` past what it
    settled; a record the outbox must look at again (in its grace period, or refused by the events
    stream) holds `since` at its sequence. The first pass of a process reads the whole bucket."""

    since: int = 0
    end: int = 0  # where the last read stopped


async def _read_jobs(services: Services, known: Known) -> list[tuple[int, Job]]:
    """The records written since `known.since` that are final with their final event not
    announced, with their sequences."""
    state = (await services.jobs.kv.status()).stream_info.state
    known.end = state.last_seq + 1
    if not state.first_seq <= known.since <= known.end:  # first pass, or the bucket was purged or made anew
        known.since = state.first_seq
    unannounced: list[tuple[int, Job]] = []
    last = [known.since - 1]

    def collect(sequence: int, key: str, job: Job | None) -> None:
        last[0] = sequence
        if job is not None and job.final and outbox_announcement(job, services.settings.source) is not None:
            unannounced.append((sequence, job))

    if state.messages and known.since < known.end:  # (an empty stream's first sequence is 0: no start)
        await scan_records(services.jobs, known.since, known.end, collect)
        known.end = last[0] + 1  # a read that stalled (a leader change, say) goes on from there next time
    return unannounced


async def _announce_unannounced(services: Services, now: datetime, known: Known,
                                unannounced: list[tuple[int, Job]]) -> int:
    """The outbox's safety net: final records, last changed more than `ANNOUNCE_GRACE` ago, whose
    final event is not in `announced`. The first refused publish ends the pass (the stream is
    likely down): next sweep."""
    held, published = known.end, 0
    for sequence, job in unannounced:
        if job.updated + ANNOUNCE_GRACE > now:  # the runtime's turn still: look again next sweep
            held = min(held, sequence)
            continue
        try:
            published += await _announce(services, job)
        except Exception as exc:
            log.warning("cleanup: final event of %s not published (%s); trying again next sweep", job.id, exc)
            held = min(held, sequence)
            break
    known.since = held
    if published:
        log.warning("cleanup: published %d final event(s) the runtime never got out", published)
    return published


async def run(services: Services, stopping: asyncio.Event) -> None:
    """Sweep every `cleanup_interval` seconds until `stopping`."""
    interval = services.settings.cleanup_interval
    log.info("cleanup: sweeping %s every %.0fs", PREFIX, interval)
    known = Known()
    while not stopping.is_set():
        try:
            await sweep(services, known=known)
        except Exception:
            log.exception("cleanup: sweep failed; trying again in %.0fs", interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
