"""The outbox: a job's final event is derived from its KV record, and the record remembers it went out.

The job record is the truth; `asset.ready`, `export.ready`, `job.failed`, `job.cancelled` and
`job.expired` are announcements of it: every end of a job is announced. `announcement(job)`
rebuilds the event a final record calls for, with its derived id (`{job}:ready`, `{job}:failed`,
...; a re-run's attempt n>1 adds `:n`, so its events are not taken for the first attempt's
duplicates), from the record alone, so any redelivery of any message of the
job can publish it again; `Job.announced` says which ones are out, so none does it twice.

Order: publish, then mark (compare-and-set `announced`). A crash between the two leaves the
record final and unmarked: the next delivery of any of the job's messages publishes again. If
that happens within the stream's duplicate window the server drops the copy by `Nats-Msg-Id`;
only a crash in that instant *and* a redelivery later than the window can show a consumer the
event twice. The other order (mark, then publish) turns that same crash into an event that is
never sent, and nothing would ever send it: at-least-once with a narrow window beats
at-most-once. Every later delivery sees the marker and publishes nothing, however late it comes
(a part replayed an hour after ready), so "nothing done twice" no longer rests on the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import messages as m
from .jobs import Job

READY = "ready"
FAILED = "failed"
CANCELLED = "cancelled"
EXPIRED = "expired"
MISSING_IN_EVENT = 50  # first missing keys an export.ready carries (all are in the manifest)


@dataclass(frozen=True)
class Announcement:
    subject: str
    event: m.Event
    marker: str  # what `Job.announced` gains once the event is published


def announcement(job: Job, source: str) -> Announcement | None:
    """The event a final record calls for and has not announced yet; None when there is none
    (not final, or already announced)."""
    if job.status == "ready" and READY not in job.announced:
        if job.kind == "export":
            return Announcement(m.EVENTS_EXPORT_READY, export_ready(job, source), READY)
        return Announcement(m.EVENTS_ASSET_READY, asset_ready(job, source), READY)
    if job.status == "failed" and FAILED not in job.announced:
        return Announcement(m.EVENTS_JOB_FAILED, job_failed(job, source), FAILED)
    if job.status == "cancelled" and CANCELLED not in job.announced:
        return Announcement(m.EVENTS_JOB_CANCELLED, m.JobCancelled(
            id=event_id(job, CANCELLED), source=source, time=m.now(), subject=job.id,
            data=m.JobEndedData(job=job.id, stage=job.stage, reason=_last_reason(job, "cancel"))), CANCELLED)
    if job.status == "expired" and EXPIRED not in job.announced:
        return Announcement(m.EVENTS_JOB_EXPIRED, m.JobExpired(
            id=event_id(job, EXPIRED), source=source, time=m.now(), subject=job.id,
            data=m.JobEndedData(job=job.id, stage=job.stage, reason="download window passed")), EXPIRED)
    return None


def event_id(job: Job, marker: str) -> str:
    """`{job}:{marker}` for the first attempt, `{job}:{marker}:{n}` for attempt n of a re-run."""
    return m.derived_id(job.id, marker, str(job.attempt) if job.attempt > 1 else "")


def _last_reason(job: Job, stage: str) -> str | None:
    found = [error for error in job.errors if error.stage == stage and error.attempt == job.attempt]
    return found[-1].reason if found else None


def asset_ready(job: Job, source: str) -> m.AssetReady:
    return m.AssetReady(
        id=event_id(job, READY), source=source, time=m.now(), subject=job.id,
        data=m.AssetReadyData(
            job=job.id, asset=job.asset or job.id, key=job.source_key or "",
            media=job.media or "image",  # type: ignore[arg-type]
            outputs=job.outputs,
        ),
    )


def export_ready(job: Job, source: str) -> m.ExportReady:
    assert job.url is not None and job.expires is not None, f"export {job.id} is ready without a url"
    return m.ExportReady(
        id=event_id(job, READY), source=source, time=m.now(), subject=job.id,
        data=m.ExportReadyData(
            job=job.id, url=job.url, expires=job.expires, files=sum(p.files for p in job.exports),
            bytes=sum(p.bytes for p in job.exports), parts=job.exports,
            missing=job.missing[:MISSING_IN_EVENT], missing_count=job.missing_count,
        ),
    )


def job_failed(job: Job, source: str) -> m.JobFailed:
    last = job.errors[-1] if job.errors else None
    return m.JobFailed(
        id=event_id(job, FAILED), source=source, time=m.now(), subject=job.id,
        data=m.JobFailedData(job=job.id, stage=last.stage if last else job.stage,
                             error=last.reason if last else "failed"),
    )
