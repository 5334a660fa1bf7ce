"""Server-Sent Events of one job, from the process's KV watch of the jobs bucket (no polling).

    event: job
    id: <KV revision of the record>
    data: <JobView JSON>

One event per record revision the watch sees, in revision order; the stream ends after a final
status (ready, failed, cancelled, expired). A `: heartbeat` comment every JETMEDIA_GATEWAY_HEARTBEAT
seconds keeps proxies from closing an idle stream. A client that reconnects sends the last id it
saw (`Last-Event-ID`, or `?last_event_id=` for clients that cannot set headers): revisions up to
it are not sent again, later ones are, none skipped that the bucket still holds. An id past every
revision the bucket has (a bogus one, or one from before the bucket was made anew) still gets the
final record, so such a stream ends with the job instead of heartbeating forever.

The jobs bucket keeps one revision per job (history 1), so a client that was away while the record
changed several times gets the newest of those revisions, then every later one: the record is the
whole state, so nothing it says is lost; only intermediate states are folded.

Order of work per stream: register for the job's updates first (feed.py), then read the current
record and send it if it is newer than Last-Event-ID, then each update with a higher revision than
the last one sent. An update lands in the record read, in the queue, or in both; the revision
dedupes, so nothing is lost or repeated. When the feed ends a stream (client too slow, the watch
restarted or stopped), the response ends cleanly and EventSource resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from shared.jobs import Job, JobStore, decode_job

from .feed import JobFeed
from .httpmetrics import sse_clients
from .views import JobView

RETRY_MS = 2000  # what EventSource waits before reconnecting
_encoder = msgspec.json.Encoder()


def message(view: JobView, revision: int) -> bytes:
    return b"event: job\nid: %d\ndata: %s\n\n" % (revision, _encoder.encode(view))


async def job_events(
    feed: JobFeed, jobs: JobStore, job_id: str, after: int, heartbeat: float,
    render: Callable[[Job], Awaitable[JobView]],
) -> AsyncIterator[bytes]:
    """The SSE byte stream of `job_id` from revision `after` on (0: from the current record)."""
    listener = feed.listen(job_id)
    sse_clients.inc()
    try:
        yield b"retry: %d\n\n" % RETRY_MS
        current = await jobs.raw_entry(job_id)
        if current is not None:
            raw, revision = current
            job = decode_job(raw)
            if revision > after or (job.final and revision < after):
                yield message(await render(job), revision)
                after = revision
            if job.final:
                return
        while not listener.ended:
            try:
                async with asyncio.timeout(heartbeat):
                    update = await listener.queue.get()
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            if update is None or listener.ended:
                return
            revision, raw = update
            if revision == after:  # already sent (it was the current record)
                continue
            job = decode_job(raw)
            if revision < after and not job.final:
                continue  # the client claims a later revision than this one: only the end is news to it
            yield message(await render(job), revision)
            after = revision
            if job.final:
                return
    finally:
        sse_clients.dec()
        feed.leave(listener)
