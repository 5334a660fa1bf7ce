"""The job records a process reads before each message, kept current by a KV watch.

Before every message the runtime reads its job's record (skip a final or cancelled job, the
attempt a re-run's ids carry). One KV get per message was the largest cost of the bus
(docs/benchmarks.md, "Bus"); records change far less often than messages pass. So each
process watches the jobs bucket (an ordered push consumer from "now on": updates only, nothing
replayed) and keeps the latest raw value (decoded only when used) of every record it has read or
seen change: the 50,000 most recently touched (tens of MB at most), each for at most `ttl`
seconds without news.

What a cached record may be: a few milliseconds behind the bucket (the watch is asynchronous).
That is the window the check always had (the record can change right after a get), and the
runtime asks the bucket itself where it matters: a producer's request (it may start a re-run)
and a message of a later attempt than the cached record knows (its `Nats-Msg-Id` ends `#N`).
A job with no record is never cached (its record may be created any time).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from .bus import delivered
from .jobs import BUCKET, Job, JobStore, decode_job

log = logging.getLogger("jetmedia.recordcache")
_PREFIX = f"$KV.{BUCKET}."
_DELETES = ("DEL", "PURGE")


class RecordCache:
    def __init__(self, jobs: JobStore, js: JetStreamContext, size: int = 50_000, ttl: float = 60.0) -> None:
        self.jobs = jobs
        self.js = js
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[int, bytes | None, float]] = OrderedDict()  # job -> (rev, raw, at)
        self._sub: Any = None

    async def start(self) -> None:
        """Watch from now on; what was written before is read (and then cached) on first use."""
        self._sub = await self.js.subscribe(f"{_PREFIX}>", stream=f"KV_{BUCKET}", cb=self._changed,
                                            ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection is going away anyway
                log.debug("record cache: unsubscribe failed: %s", exc)

    async def _changed(self, msg: Msg) -> None:
        job = msg.subject[len(_PREFIX):]
        deleted = bool(msg.headers) and (msg.headers or {}).get("KV-Operation") in _DELETES
        got = delivered(msg.reply)  # the revision (cheaper than msg.metadata)
        revision = got.stream_seq if got is not None else msg.metadata.sequence.stream
        self._store(job, revision, None if deleted else msg.data)

    def _store(self, job: str, revision: int, raw: bytes | None) -> None:
        known = self._entries.get(job)
        if known is not None and known[0] >= revision:
            return
        self._entries[job] = (revision, raw, time.monotonic())
        self._entries.move_to_end(job)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, job: str) -> None:
        """Drop a job's entry (a cancel was broadcast: its next message reads the bucket)."""
        self._entries.pop(job, None)

    async def get(self, job: str, *, fresh: bool = False) -> Job | None:
        """The job's record: cached, or read from the bucket (always, with `fresh`)."""
        if not fresh and self._sub is not None:  # without the watch nothing would keep it current
            known = self._entries.get(job)
            if known is not None and time.monotonic() - known[2] < self.ttl:
                self._entries.move_to_end(job)
                return None if known[1] is None else decode_job(known[1])
        entry = await self.jobs.raw_entry(job)
        if entry is None:
            self._entries.pop(job, None)
            return None
        raw, revision = entry
        self._store(job, revision, raw)
        return decode_job(raw)
