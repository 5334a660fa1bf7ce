"""Job state in the `jetmedia-jobs` KV bucket, changed only by compare-and-set.

Several stages touch one job at once (variant and transcode parts of a video arrive in any
order), so every change is a pure function `Job -> Job` applied by `JobStore.update`, which
re-reads and retries when another writer got there first: no update is ever lost. The record
stays small (counters and summaries); per-chunk detail goes under its own keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from . import metrics
from .errors import UnknownJob
from .messages import ExportFile, MediaInfo, OutputFile, now

BUCKET = "jetmedia-jobs"
MAX_ERRORS = 20
MAX_ERROR_TEXT = 1000

JobKind = Literal["asset", "export"]
JobStatus = Literal["queued", "running", "ready", "failed", "cancelled", "expired"]
FINAL_STATUSES: frozenset[str] = frozenset({"ready", "failed", "cancelled", "expired"})
RERUNNABLE: frozenset[str] = frozenset({"failed", "cancelled"})  # a producer's request starts a new attempt


class JobError(Struct, kw_only=True, frozen=True):
    """One failure (or a cancel) in the job's history; every attempt's are kept."""

    stage: str
    reason: str
    at: datetime
    attempt: int = 1


class Part(Struct, kw_only=True, frozen=True):
    """What one stage contributed to an asset job (variants, transcodes, a poster)."""

    outputs: list[OutputFile] = []
    source: MediaInfo | None = None
    colours: list[str] = []
    placeholder: str | None = None


class Job(Struct, kw_only=True, frozen=True):
    """A job's record in the `jetmedia-jobs` KV bucket, under the job id (README: the job record).

    Statuses: queued -> running -> ready | failed | cancelled; an export's ready -> expired. A
    producer's request for a failed or cancelled job starts attempt n+1 (running again, `errors`
    kept)."""

    id: Annotated[str, Meta(description="the job id, also its key: what the producer sent")]
    kind: JobKind
    status: Annotated[JobStatus, Meta(description="final: ready, failed, cancelled, expired")] = "queued"
    stage: Annotated[str, Meta(description="the stage working on it, or where it ended")] = "upload"
    done: int = 0
    total: int = 0
    bytes: int = 0
    media: str | None = None
    source_key: str | None = None
    asset: str | None = None
    parts_needed: list[str] = []
    parts: dict[str, Part] = {}
    url: str | None = None
    missing: list[str] = []
    errors: list[JobError] = []
    created: datetime
    updated: datetime
    expires: datetime | None = None
    percent: float | None = None  # progress of a long step (a transcode), 0-100
    # export jobs: progress and results (per-chunk detail lives under `{job}.chunk.{n}`)
    archive: str | None = None  # archive file name, without .zip
    compression: str = "auto"
    chunks: int = 0
    chunks_counted: list[int] = []  # chunk numbers already added to done/bytes (redelivery-safe)
    finalize_by: int | None = None  # the chunk whose count completed the set (it emits finalize)
    missing_count: int = 0  # `missing` keeps only the first keys; the manifest has them all
    archived: int = 0  # files streamed into the archive so far
    archived_bytes: int = 0
    exports: list[ExportFile] = []  # the archive, or its numbered parts
    transform: str = "original"  # the export's per-item transform (mp3, opus, display)
    untransformed_count: int = 0  # sources the transform could not apply to (listed in the manifest)
    # the outbox: final events (`ready`, `failed`, `cancelled`, `expired`) already published; see shared/outbox.py
    announced: list[str] = []
    attempt: int = 1  # 1, then +1 each time a failed or cancelled job is run again
    started_by: int | None = None  # JM_UPLOAD stream sequence of the request that started this attempt
    callback_url: str | None = None  # the request's: gets the final events, signed (services/notify)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def outputs(self) -> list[OutputFile]:
        return [out for name in sorted(self.parts) for out in self.parts[name].outputs]

    def with_error(self, stage: str, reason: str) -> Job:
        error = JobError(stage=stage, reason=reason[:MAX_ERROR_TEXT], at=now(), attempt=self.attempt)
        return msgspec.structs.replace(self, errors=[*self.errors, error][-MAX_ERRORS:])


def new_job(job_id: str, kind: JobKind, **fields: object) -> Job:
    stamp = now()
    return Job(id=job_id, kind=kind, created=stamp, updated=stamp, **fields)  # type: ignore[arg-type]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Job)


class Conflict(Exception):
    """Raised by a change function to leave the record untouched."""


class JobStore:
    """Typed access to the jobs bucket. One per process; safe to share between stages."""

    WRITTEN = 1024  # records remembered as last written by this store (see `update`)

    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self.kv = kv
        self.js = js  # reads of the bucket's stream itself (`recent_jobs`)
        self._written: OrderedDict[str, tuple[Job, int]] = OrderedDict()  # job -> (record, revision) we wrote

    def _wrote(self, job: Job, revision: int) -> None:
        self._written[job.id] = (job, revision)
        self._written.move_to_end(job.id)
        while len(self._written) > self.WRITTEN:
            self._written.popitem(last=False)

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1, max_age: float | None = None) -> JobStore:
        """`max_age` (JETMEDIA_JOB_MAX_AGE): records unchanged for that long are removed by the
        server, 0 keeps them for good; a worker's start applies it to the bucket, and None (a
        person's command, whose environment may lack the setting) leaves the bucket as it is."""
        try:
            kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(bucket=BUCKET, history=1, replicas=replicas, ttl=max_age or None)
        else:
            config = (await kv.status()).stream_info.config
            if max_age is not None and (config.max_age or 0.0) != max_age:
                await js.update_stream(dataclasses.replace(config, max_age=max_age))
        return cls(kv, js)

    async def get(self, job_id: str) -> Job | None:
        entry = await self._entry(job_id)
        return None if entry is None else entry[0]

    async def raw_entry(self, job_id: str) -> tuple[bytes, int] | None:
        """The record as stored, and its revision (shared/recordcache.py decodes it when used)."""
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return None
        if not entry.value:  # a delete marker
            return None
        return entry.value, entry.revision or 0

    async def _entry(self, job_id: str) -> tuple[Job, int] | None:
        raw = await self.raw_entry(job_id)
        return None if raw is None else (_decoder.decode(raw[0]), raw[1])

    async def create(self, job: Job) -> tuple[Job, bool]:
        """Store a new job; if it already exists (a redelivery), return the stored one."""
        try:
            self._wrote(job, await self.kv.create(job.id, _encoder.encode(job)))
            metrics.jobs_total.labels(job.kind, job.status).inc()
            return job, True
        except KeyWrongLastSequenceError:
            existing = await self.get(job.id)
            if existing is None:  # deleted in between: try once more
                await self.kv.put(job.id, _encoder.encode(job))
                return job, True
            return existing, False

    async def start(self, job: Job, seq: int | None) -> tuple[Job, bool]:
        """Create the job, or start its next attempt: a failed or cancelled job asked for again by
        a different request message (`seq`, its JM_UPLOAD sequence; a redelivery of the message
        that started the current attempt is no new request) becomes `job` with `attempt` + 1 and
        the earlier attempts' errors. True when there is something to do."""
        job = msgspec.structs.replace(job, started_by=seq)
        stored, created = await self.create(job)
        if created:
            return stored, True

        def rerun(current: Job) -> Job:
            if current.status not in RERUNNABLE or seq is None or current.started_by == seq:
                return current
            return msgspec.structs.replace(job, created=current.created, attempt=current.attempt + 1,
                                           errors=current.errors)

        again = await self.update(job.id, rerun)
        return again, again.attempt != stored.attempt

    async def reopen(self, job_id: str) -> Job:
        """A failed or cancelled job runs again from where it stopped (its finished parts kept):
        for replaying an internal stage's dead letter (shared/dlq.py)."""
        def change(current: Job) -> Job:
            if current.status not in RERUNNABLE:
                return current
            return msgspec.structs.replace(current, status="running", attempt=current.attempt + 1, announced=[
                marker for marker in current.announced if marker not in ("failed", "cancelled")])

        return await self.update(job_id, change)

    async def update(self, job_id: str, change: Callable[[Job], Job], *, attempts: int = 1000) -> Job:
        """Apply `change` with compare-and-set, retrying on conflict with a fresh read.

        The first try starts from the record this store wrote last, when it did (a job's next
        step in the same process: the upload's route after its create, finalize's announcement
        mark after its merge), instead of reading it back: one KV read fewer per step. The
        compare-and-set still decides: if anyone wrote since, the write fails and the loop reads
        the bucket as before; a change that leaves that copy as it is is re-checked on a read
        (a newer record might need the change)."""
        known = self._written.pop(job_id, None)
        for attempt in range(attempts):
            remembered, current = known is not None, known or await self._entry(job_id)
            known = None
            if current is None:
                raise UnknownJob(f"job {job_id!r} has no record")
            job, revision = current
            changed = change(job)
            if changed is job:
                if remembered:
                    continue
                return job
            changed = msgspec.structs.replace(changed, updated=now())
            try:
                self._wrote(changed, await self.kv.update(job_id, _encoder.encode(changed), last=revision))
                if changed.status != job.status:
                    metrics.jobs_total.labels(changed.kind, changed.status).inc()
                    if changed.status == "ready":
                        metrics.job_finished(changed.kind, (changed.updated - changed.created).total_seconds())
                return changed
            except KeyWrongLastSequenceError:
                if not remembered:  # a copy of ours that was out of date is no contention: read now
                    await asyncio.sleep(random.uniform(0, min(0.001 * 2 ** min(attempt, 10), 0.1)))
        raise RuntimeError(f"job {job_id!r}: gave up after {attempts} conflicting updates")

    async def fail(self, job_id: str, stage: str, reason: str, kind: JobKind = "asset", *,
                   create: bool = True) -> Job | None:
        """Mark failed with the reason (a final job keeps its status and only gains the error).
        A job that never got a record gets one with `create`; without it, None: the runtime does
        not make records for ids that only a stray or forged message ever named."""
        def change(job: Job) -> Job:
            failed = job.with_error(stage, reason)
            if job.final:
                return failed
            return msgspec.structs.replace(failed, status="failed", stage=stage)

        if await self.get(job_id) is None:
            if not create:
                return None
            await self.create(new_job(job_id, kind, stage=stage))
        try:
            return await self.update(job_id, change)
        except UnknownJob:
            if create:
                raise
            return None

    async def mark_announced(self, job_id: str, marker: str) -> Job:
        """Remember that the job's `marker` event is out (after publishing it: see shared/outbox.py)."""
        def change(job: Job) -> Job:
            if marker in job.announced:
                return job
            return msgspec.structs.replace(job, announced=[*job.announced, marker])

        return await self.update(job_id, change)

    async def put_raw(self, key: str, value: bytes) -> None:
        """Side records (`{job}.chunk.{n}`) that are written whole by one owner."""
        await self.kv.put(key, value)

    async def get_raw(self, key: str) -> bytes | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value or None


def encode_job(job: Job) -> bytes:
    return _encoder.encode(job)


def decode_job(payload: bytes) -> Job:
    return _decoder.decode(payload)


def fraction(job: Job) -> float:
    """How far a job is, 0-1: finished parts plus the running transcode's `percent` (assets);
    checked then archived files (exports). The CLI's bars and the gateway's `percent` use it."""
    if job.final:
        return 1.0
    if job.kind == "export":
        wanted = max(job.total - job.missing_count, 1)
        checked = job.done / job.total if job.total else 0.0
        return min(0.3 * checked + 0.7 * min(job.archived / wanted, 1.0), 0.99)
    running = (job.percent or 0.0) / 100.0
    return min((job.done + running) / max(job.total, 1), 0.99)


TAIL = 2_000  # bucket messages `recent_jobs` reads first; each further pass reads four times as many
CLOCK_SLACK = 60.0  # seconds: how far a writer's clock (a record's `created`) may be off the server's


async def recent_jobs(jobs: JobStore, limit: int, keep: Callable[[Job], bool] = lambda job: True) -> list[Job]:
    """The `limit` newest jobs (by `created`) that `keep` accepts, newest first, read from the
    bucket's tail instead of the whole bucket: records are kept for good, so listing every one of
    them gets slower with every job ever run, here and in the gateway's /v1/jobs.

    The bucket keeps one message per key (history 1), its latest, so the messages from sequence
    S on hold every job written since then, and every job *created* since then. A pass reads the
    tail from S; a job not read was created before the first message read was stored, so the
    answer is complete once `limit` accepted jobs were created after that (plus CLOCK_SLACK, as
    `created` is the writer's clock). Otherwise the next pass reads four times further back, down
    to the whole bucket at worst."""
    state = (await jobs.kv.status()).stream_info.state
    if not state.messages or limit <= 0:
        return []
    found: dict[str, Job | None] = {}  # None: deleted, or not a job record
    end, window = state.last_seq + 1, TAIL
    while True:
        start = max(state.first_seq, end - window)
        since = await scan_records(jobs, start, end, _newest_of(found))
        chosen = sorted((job for job in found.values() if job is not None and keep(job)),
                        key=lambda job: job.created, reverse=True)[:limit]
        complete = since is not None and len(chosen) == limit and (
            chosen[-1].created.timestamp() >= since + CLOCK_SLACK)
        if start <= state.first_seq or complete:
            return chosen
        end, window = start, window * 4


def _newest_of(found: dict[str, Job | None]) -> Callable[[int, str, Job | None], None]:
    """Keep the first record read per key: a key seen already, in a later pass, is newer."""
    def keep(sequence: int, key: str, job: Job | None) -> None:
        found.setdefault(key, job)

    return keep


async def scan_records(jobs: JobStore, start: int, end: int, each: Callable[[int, str, Job | None], None]
                       ) -> float | None:
    """Call `each(sequence, key, job)` for the records stored at sequences [start, end) of the
    bucket's stream, in order (job None: deleted, or a side record, not a job); the stream time
    of the first one read (None: nothing there). A callback subscription: `next_msg` costs two
    tasks per message, twice the time of the whole read."""
    prefix = f"$KV.{BUCKET}."
    first: list[float] = []
    taken = [0]
    done = asyncio.Event()

    async def take(msg: Msg) -> None:
        if done.is_set():
            return
        taken[0] += 1
        meta = msg.metadata  # sequence, time stored, pending: one parse of the reply subject
        sequence = meta.sequence.stream
        if sequence >= end:
            done.set()
            return
        if not first:
            first.append(meta.timestamp.timestamp())
        key = msg.subject[len(prefix):]
        deleted = (msg.headers or {}).get("KV-Operation") is not None
        each(sequence, key, None if ".chunk." in key or deleted or not msg.data else _decoder.decode(msg.data))
        if sequence >= end - 1 or meta.num_pending == 0:
            done.set()

    sub = await jobs.js.subscribe(f"{prefix}>", stream=f"KV_{BUCKET}", cb=take, ordered_consumer=True,
                                  deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  config=ConsumerConfig(opt_start_seq=start))
    try:
        while not done.is_set():
            before = taken[0]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=5.0)
            if taken[0] == before:  # nothing (left) from `start` on: removed since the status read
                break
    finally:
        await sub.unsubscribe()
    return first[0] if first else None
