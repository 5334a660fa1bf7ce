"""Server-Sent Events of one job, from a KV watch on its record (no polling).

    event: job
    id: <KV revision of the record>
    data: <JobView JSON>

One event per record revision the watch sees, in revision order; the stream ends after a final
status (ready, failed, cancelled, expired). A `: heartbeat` comment every JETMEDIA_GATEWAY_HEARTBEAT
seconds keeps proxies from closing an idle stream. A client that reconnects sends the last id it
saw (`Last-Event-ID`, or `?last_event_id=` for clients that cannot set headers): revisions up to
it are not sent again, later ones are, none skipped that the bucket still holds.

The jobs bucket keeps one revision per job (history 1), so a client that was away while the record
changed several times gets the newest of those revisions, then every later one: the record is the
whole state, so nothing it says is lost; only intermediate states are folded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
from nats.js.kv import KV_DEL, KV_PURGE

from shared.jobs import JobStore, decode_job

from .httpmetrics import sse_clients
from .views import JobView

RETRY_MS = 2000  # what EventSource waits before reconnecting
_encoder = msgspec.json.Encoder()


def message(view: JobView, revision: int) -> bytes:
    return b"event: job\nid: %d\ndata: %s\n\n" % (revision, _encoder.encode(view))


async def job_events(
    jobs: JobStore, job_id: str, after: int, heartbeat: float, render: Callable[..., Awaitable[JobView]],
    open_watches: set[Any],
) -> AsyncIterator[bytes]:
    """The SSE byte stream of `job_id` from revision `after` on (0: from the current record).
    `open_watches` holds the watch while the stream runs: stopping the gateway stops them all,
    which ends every stream at once instead of after the next heartbeat."""
    watcher = await jobs.kv.watch(job_id, inactive_threshold=max(60.0, heartbeat * 4))
    open_watches.add(watcher)
    sse_clients.inc()
    try:
        yield b"retry: %d\n\n" % RETRY_MS
        while True:
            try:
                entry = await watcher.updates(timeout=heartbeat)
            except (nats.errors.TimeoutError, TimeoutError):
                yield b": heartbeat\n\n"
                continue
            if entry is None or not hasattr(entry, "revision"):  # end of the initial values (or the watch stopped)
                if entry is None:
                    continue
                return
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                continue
            job = decode_job(entry.value)
            revision = entry.revision or 0
            if revision > after:
                yield message(await render(job), revision)
                after = revision
            if job.final:
                return
    finally:
        sse_clients.dec()
        open_watches.discard(watcher)
        with contextlib.suppress(Exception):
            await watcher.stop()
