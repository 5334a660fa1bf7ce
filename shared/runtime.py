"""The worker runtime every stage runs on: the JetStream protocol, written once.

A stage is `Stage(name, stream, handle, accepts)`, where `handle(event, ctx)` does the work and
returns the messages to send next. Around it the runtime:

- pulls in batches, keeps at most `concurrency` handlers in flight, offers a thread pool for
  CPU-heavy work (`ctx.run_cpu`) so the event loop keeps heartbeating;
- heartbeats every in-flight message with `in_progress()`, so a slow handler is never
  redelivered while its process lives, and a dead process's work is redelivered after ack_wait;
- publishes the returned messages (with their derived `Nats-Msg-Id`) and only then acks;
- on `Retry` or a transient error: `nak(delay)` on the backoff schedule; on `Reject`, a
  permanent error (shared/errors.py: one table for every stage) or when deliveries are used up:
  a dead letter in JM_DLQ, the job marked failed with the reason in KV, `term()`; if recording
  the failure itself fails, the message is handed back (`nak`, counted as outcome "error");
- final events go through the outbox (shared/outbox.py): derived from the job record, published,
  then marked on the record; a message of a job that is already final is acked after publishing
  the job's final event if it is not marked yet, so a lost `ready`/`failed` is sent by the next
  delivery and a late duplicate sends nothing, whatever the stream's duplicate window;
- skips (acks) messages of cancelled jobs, and cancels the running handler when its job is
  cancelled (its `finally` blocks clean up: kill ffmpeg, abort the multipart upload);
- when S3 or NATS cannot be reached (shared/breaker.py): stops pulling, keeps the failed
  handlers' messages in flight until a probe gets an answer, then runs them again (the outage
  spends no delivery);
- on shutdown: stops pulling, lets in-flight work finish within the grace period, naks the rest
  (also messages that reach the subscription after it stopped pulling).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from . import bus, errors, metrics, outbox
from . import messages as m
from .breaker import NATS as NATS_DOWN
from .breaker import Breakers, nats_probe, s3_probe
from .bus import BULK, INTERACTIVE
from .config import ConfigError, Settings
from .fasts3 import FastS3
from .jobs import RERUNNABLE, Job, JobKind, JobStore
from .lanes import BulkShare, PriorityPool, Puller
from .puback import Publisher
from .recordcache import RecordCache
from .storage import Storage

log = logging.getLogger("jetmedia.runtime")

P = ParamSpec("P")
T = TypeVar("T")
CANCEL_SUBJECT = "jetmedia.control.cancel"
PULL_WAIT = 1.0  # seconds one pull request waits for messages (also how long it may outlive fetch())
MAX_ERROR_TEXT = 4000  # characters of an error kept in a dead letter (the job record keeps 1000)
UTF8_BOM = b"\xef\xbb\xbf"  # a byte order mark some producers' JSON starts with
DLQ_ENVELOPE = 48 * 1024  # bytes a dead letter needs besides the original: attributes, error (6x if escaped)


class Retry(Exception):
    """Try again later: the input is fine, something around it is not (yet)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Reject(Exception):
    """Permanent: this input can never succeed (bad, unsupported, over a limit)."""


class Refused(Reject):
    """The message is no event this stage takes (not JSON, not the schema, another stage's type).
    `claim` is what it says about itself: the job a producer's request names gets a failed record."""

    def __init__(self, reason: str, claim: m.Claim) -> None:
        super().__init__(reason)
        self.claim = claim


@dataclass(frozen=True)
class Emit:
    subject: str
    event: m.Event
    announces: str | None = None  # an outbox marker: recorded on the job (event.subject) once published
    lane: str | None = None  # priority lane; None: the lane of the message being handled


def announcements(job: Job, settings: Settings) -> list[Emit]:
    """The job's final event, if its record calls for one not yet announced (see shared/outbox.py)."""
    found = outbox.announcement(job, settings.source)
    return [] if found is None else [Emit(found.subject, found.event, announces=found.marker)]


Handler = Callable[[Any, "Context"], Awaitable[Sequence[Emit]]]


@dataclass(frozen=True)
class Stage:
    name: str  # durable consumer name and `stage` metric label
    stream: str
    handle: Handler
    accepts: tuple[type[m.Event], ...]
    concurrency: int | None = None  # the stage's own default; JETMEDIA_STAGE_CONCURRENCY overrides it
    cancellable: bool = True  # skip/cancel work of cancelled jobs
    reruns: tuple[type[m.Event], ...] = ()  # requests that start a new attempt of a failed/cancelled job
    check: Callable[[Settings], None] | None = None  # raises ValueError when the settings cannot work

    def check_settings(self, settings: Settings) -> None:
        """Fail at start-up, not at the first message, when this stage's settings are wrong."""
        if self.check is not None:
            try:
                self.check(settings)
            except ValueError as exc:
                raise ConfigError(f"stage {self.name}: {exc}") from None


class Services:
    """What handlers share within one process: connections, stores, the CPU pool."""

    def __init__(self, settings: Settings, nc: NATS, js: JetStreamContext, jobs: JobStore, storage: Storage):
        self.settings = settings
        self.nc = nc
        self.js = js
        self.jobs = jobs
        self.storage = storage
        self.fast_s3 = FastS3(settings)  # whole-object GET/PUT for a photo's hot path (shared/fasts3.py)
        threads = settings.cpu_threads or os.cpu_count() or 2
        self.cpu = PriorityPool(threads, settings.bulk_share)
        self.workers: list[Worker] = []
        self.records = RecordCache(jobs, js)  # serves only once started (Services.open starts it)
        self.publisher = Publisher(nc)  # likewise; until then publish() uses js.publish
        self._cancel_sub: Any = None
        self.breakers = Breakers({"s3": s3_probe(settings), "nats": nats_probe(nc)})

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, name: str = "jetmedia", *, layout: bool = True) -> AsyncIterator[Services]:
        """Connect to NATS and S3, make sure the layout exists; close everything on exit."""
        nc = await bus.connect(settings, name)
        try:
            js = nc.jetstream()
            if layout:
                await bus.ensure_layout(js, settings)
            jobs = await bus.retrying("jobs KV", lambda: JobStore.open(
                js, settings.replicas, settings.job_max_age if layout else None))
            async with Storage(settings) as storage:
                services = cls(settings, nc, js, jobs, storage)
                await services._listen_for_cancels()
                await services.records.start()
                await services.publisher.start()
                _freeze_startup_heap()
                try:
                    yield services
                finally:
                    await services.close()
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()

    async def close(self) -> None:
        """What the services own beyond the connections: the breakers' probes, the CPU pool."""
        await self.records.close()
        await self.publisher.close()
        await self.breakers.close()
        await self.fast_s3.close()
        self.cpu.shutdown()

    async def run_cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.run_cpu_in(INTERACTIVE, fn, *args, **kwargs)

    async def run_cpu_in(self, lane: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """CPU work of a message of `lane`: queued interactive work runs before queued bulk work."""
        result: T = await asyncio.wrap_future(self.cpu.submit(lane, lambda: fn(*args, **kwargs)))
        return result

    def subject_for(self, emit: Emit, lane: str = INTERACTIVE) -> str:
        """Where an emit goes: its base subject with the lane's token (bus.lane_subject); with
        lanes off (JETMEDIA_LANES=false) everything stays on the bare, interactive subject."""
        if not self.settings.lanes:
            return emit.subject
        return bus.lane_subject(emit.subject, emit.lane or lane)

    async def publish(self, emit: Emit, attempt: int = 1, lane: str = INTERACTIVE) -> bool:
        """Publish and wait for the PubAck (shared/puback.py once started); False: a duplicate."""
        subject = self.subject_for(emit, lane)
        msg_id = emit.event.id
        if attempt > 1 and emit.announces is None:
            # a re-run's work repeats the first attempt's derived ids: the duplicate window must not drop it
            msg_id = f"{msg_id}#{attempt}"
        if self.publisher.started:
            return await self.publisher.publish(subject, m.encode(emit.event), msg_id)
        ack = await self.js.publish(subject, m.encode(emit.event), timeout=5.0, headers={bus.MSG_ID: msg_id})
        return not ack.duplicate

    async def send(self, emits: Sequence[Emit], attempt: int = 1, lane: str = INTERACTIVE) -> None:
        """Publish the work first, all at once (written in order, PubAcks awaited together), then
        the announcements one by one, each marked on its job's record only once it is out."""
        if len(emits) == 1 and emits[0].announces is None:  # the usual answer: one next message
            await self.publish(emits[0], attempt, lane)
            return
        work = [emit for emit in emits if emit.announces is None]
        if len(work) == 1:
            await self.publish(work[0], attempt, lane)
        elif work:
            await asyncio.gather(*(self.publish(emit, attempt, lane) for emit in work))
        for emit in emits:
            if emit.announces is not None:
                await self.publish(emit, attempt, lane)
                if emit.event.subject:
                    await self.jobs.mark_announced(emit.event.subject, emit.announces)

    async def cancel(self, job_id: str, reason: str | None = None) -> bool:
        """Mark a job cancelled, announce it (`job.cancelled`, once: shared/outbox.py) and tell
        every worker to stop its in-flight work for it."""
        def change(job: Job) -> Job:
            if job.final:
                return job
            return msgspec.structs.replace(job.with_error("cancel", reason or "cancelled"), status="cancelled")

        job = await self.jobs.update(job_id, change)
        await self.nc.publish(CANCEL_SUBJECT, job_id.encode())
        await bus.round_trip(self.nc, 10)  # out before the announcement (not nc.flush: see round_trip)
        await self.send(announcements(job, self.settings))
        return job.status == "cancelled"

    async def _listen_for_cancels(self) -> None:
        async def on_cancel(msg: Msg) -> None:
            job_id = msg.data.decode(errors="replace")
            self.records.forget(job_id)  # its next message reads the record itself, not the watch's copy
            for worker in self.workers:
                worker.cancel_job(job_id)

        self._cancel_sub = await self.nc.subscribe(CANCEL_SUBJECT, cb=on_cancel)


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Move what start-up left (modules, the S3 client's service models, pydantic and Prometheus
    state: ~100,000 objects) out of the garbage collector's sight, once per process. Every full
    collection traversed all of it, and at bus speed a full collection comes every ~3,000
    messages (handlers in flight outlive the young generations): 35 ms each, ~12 µs per message,
    for objects that live as long as the process (docs/benchmarks.md, "Bus"). Collected first,
    so no garbage is frozen; what is created later is collected as before."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


class Context:
    """What a handler sees of the world for one message."""

    def __init__(self, services: Services, stage: str, job: str | None, delivery: int, *,
                 stream_seq: int | None = None, attempt: int = 1, lane: str = INTERACTIVE) -> None:
        self.services = services
        self.lane = lane  # what the handler's emits inherit (README "Priority lanes")
        self.stage = stage
        self.job = job
        self.delivery = delivery
        self.stream_seq = stream_seq  # the message's sequence in its stream (tells a re-run from a redelivery)
        self.attempt = attempt  # of the job (a handler that starts a re-run sets the new one)
        self.last_progress = time.monotonic()

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def storage(self) -> Storage:
        return self.services.storage

    @property
    def jobs(self) -> JobStore:
        return self.services.jobs

    async def run_cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.services.run_cpu_in(self.lane, fn, *args, **kwargs)

    def progress(self) -> None:
        """Tell the runtime the handler is advancing (used by stall detection)."""
        self.last_progress = time.monotonic()

    def count_bytes(self, direction: str, n: int) -> None:
        metrics.bytes_total.labels(self.stage, direction).inc(n)


@dataclass
class InFlight:
    msg: Msg
    job: str | None
    task: asyncio.Task[None] | None = None
    job_cancelled: bool = False
    started: float = field(default_factory=time.monotonic)
    lane: str = INTERACTIVE  # the consumer it came from


class Worker:
    """One stage's pull loop. Several Workers may share a process (`jetmedia up`)."""

    def __init__(self, stage: Stage, services: Services) -> None:
        self.stage = stage
        self.services = services
        self.settings = services.settings
        self.concurrency = (
            self.settings.stage_concurrency.get(stage.name) or stage.concurrency or self.settings.concurrency
        )
        self.inflight: dict[asyncio.Task[None], InFlight] = {}
        self._advisory_tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = False
        self.stopping = asyncio.Event()  # set by run()'s caller; waits on outages end with it
        self.subscription: Any = None  # the interactive lane's puller while run() runs
        self.pullers: list[Puller] = []
        self.share = BulkShare(self.settings.bulk_share)
        self._bulk_busy = 0  # bulk messages in flight
        self._wake = asyncio.Event()
        metrics.prime(stage.name)
        self._series = _Series(stage.name, self)
        self._requests: tuple[type[m.Event], ...] = (m.AssetUploaded, m.ExportRequested, *stage.reruns)  # _record
        services.workers.append(self)

    # --- the loop ---------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        pullers = self.pullers = [
            Puller(self.services.nc, self.stage.stream, consumer, lane, self._delivered, self._wake.set)
            for lane, consumer in self._consumers()
        ]
        for puller in pullers:
            await puller.open()
        self.subscription = pullers[0]
        advisories = [await self._watch_max_deliveries(puller.consumer) for puller in pullers]
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"{self.stage.name}-heartbeat")
        log.info("stage %s: pulling from %s (%s; concurrency %d)", self.stage.name, self.stage.stream,
                 ", ".join(p.consumer for p in pullers), self.concurrency)
        try:
            while not stopping.is_set():
                if not await self.services.breakers.wait_closed(stopping):
                    continue  # S3 or NATS is down: pull nothing new until it answers
                free = self.concurrency - len(self.inflight)
                if free <= 0:  # every slot taken: a finishing handler sets _wake
                    self._wake.clear()
                    if len(self.inflight) >= self.concurrency:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), 1.0)
                    continue
                if self._start_ready(free):
                    continue
                self._wake.clear()  # from here on, a delivery or a freed slot ends the wait below
                try:
                    got = await self._take(free - sum(p.lingering for p in pullers))
                except (TimeoutError, nats.errors.Error) as exc:
                    log.warning("stage %s: pull failed (%s); retrying", self.stage.name, type(exc).__name__)
                    if not self.services.nc.is_connected:
                        self.services.breakers.trip(NATS_DOWN, exc if str(exc) else "disconnected")
                    await asyncio.sleep(0.5)
                    continue
                if got:
                    continue
                # both lanes are empty (or bulk has no room): leave a request open, sleep until one delivers
                try:
                    for puller in pullers:
                        if puller.lane == INTERACTIVE or self._bulk_room() > 0:
                            await puller.linger(PULL_WAIT)
                except nats.errors.Error:
                    pass  # the connection is down: the next take() says so
                if not any(p.ready for p in pullers):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), PULL_WAIT)
                if not self.services.nc.is_connected:  # not an empty queue: NATS is gone
                    self.services.breakers.trip(NATS_DOWN, "disconnected")
        finally:
            for puller in pullers:  # what was delivered and not started goes back
                while puller.ready:
                    await _hand_back(puller.ready.popleft(), self._last_expiry())
            await self._drain()
            if self._last_expiry():  # a lingering request may still deliver: _delivered hands it back
                await asyncio.sleep(max(0.0, self._last_expiry() - time.monotonic()) + 0.25)
            heartbeat.cancel()
            for task in list(self._advisory_tasks):
                task.cancel()
            for sub_ in (*pullers, *advisories):
                with contextlib.suppress(Exception):
                    await (sub_.close() if isinstance(sub_, Puller) else sub_.unsubscribe())
            _Series.forget(self.stage.name, self)
            log.info("stage %s: stopped", self.stage.name)

    def _consumers(self) -> list[tuple[str, str]]:
        """(lane, durable) pairs: one per lane when the stage's stream has lanes (bus.STREAMS),
        else the single consumer named after the stage."""
        spec = bus.STREAM_BY_NAME.get(self.stage.stream)
        if spec is None or not spec.lanes:
            return [(INTERACTIVE, self.stage.name)]
        return [(lane, bus.consumer_name(self.stage.name, lane)) for lane in bus.LANES]

    async def _take(self, slots: int) -> int:
        """Ask the lanes for up to `slots` messages available now: bulk first for its share
        (BulkShare), interactive for the rest, bulk again for what interactive leaves."""
        if slots <= 0:
            return 0
        if len(self.pullers) == 1:
            return await self.pullers[0].take(slots)
        interactive, bulk = self.pullers
        room = self._bulk_room()
        quota = min(self.share.quota(slots), room)
        got = await bulk.take(quota)
        bulk_empty = got < quota
        got += await interactive.take(slots - got)
        room -= got
        if got < slots and not bulk_empty and room > 0:
            need = min(slots - got, room)
            more = await bulk.take(need)
            bulk_empty = more < need
            got += more
        if bulk_empty:
            self.share.bulk_empty()
        return got

    def _bulk_room(self) -> int:
        """Slots bulk work may still take: all but one (kept for interactive work, so a photo never
        waits for a bulk handler to end) when the stage runs at least 4 at once, else all."""
        limit = self.concurrency - 1 if self.concurrency >= 4 else self.concurrency
        return limit - self._bulk_busy - (len(self.pullers[1].ready) if len(self.pullers) > 1 else 0)

    def _start_ready(self, free: int) -> int:
        """Start delivered messages: interactive first, bulk for its share (and when interactive
        has none). Returns how many started."""
        counts = {INTERACTIVE: 0, BULK: 0}
        if len(self.pullers) == 1:
            order = self.pullers
        else:
            interactive, bulk = self.pullers
            due = self.share.quota(free) if bulk.ready else 0
            while due > 0 and bulk.ready and free > 0:
                self._start(bulk.ready.popleft(), BULK)
                counts[BULK] += 1
                due -= 1
                free -= 1
            order = [interactive, bulk]
        for puller in order:
            while puller.ready and free > 0:
                self._start(puller.ready.popleft(), puller.lane)
                counts[puller.lane] += 1
                free -= 1
        if len(self.pullers) > 1 and (counts[INTERACTIVE] or counts[BULK]):
            self.share.started(counts[INTERACTIVE], counts[BULK])
        return counts[INTERACTIVE] + counts[BULK]

    def _delivered(self, puller: Puller, msg: Msg) -> None:
        """A lane delivered a message: queue it to start, or, once stopping, hand it back (a
        lingering request can outlive the loop) so another replica starts it."""
        if self.stopping.is_set():
            log.info("stage %s: handing back a message delivered after stopping", self.stage.name)
            task = asyncio.ensure_future(_hand_back(msg, self._last_expiry()))
            self._advisory_tasks.add(task)
            task.add_done_callback(self._advisory_tasks.discard)
            return
        puller.ready.append(msg)

    def _last_expiry(self) -> float:
        return max((p.linger_until for p in self.pullers), default=0.0)

    def _start(self, msg: Msg, lane: str = INTERACTIVE) -> None:
        flight = InFlight(msg=msg, job=None, lane=lane)
        task = asyncio.create_task(self._process(flight))
        flight.task = task
        self.inflight[task] = flight
        self._bulk_busy += lane == BULK
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        flight = self.inflight.pop(task, None)
        if flight is not None and flight.lane == BULK:
            self._bulk_busy -= 1
        self._wake.set()  # a slot is free: a loop waiting for work the bulk room held back can take it

    async def _drain(self) -> None:
        """Shutdown: let in-flight handlers finish within the grace period, nak the rest."""
        self.shutting_down = True
        if not self.inflight:
            return
        log.info("stage %s: finishing %d in-flight message(s)", self.stage.name, len(self.inflight))
        _done, pending = await asyncio.wait(list(self.inflight), timeout=self.settings.shutdown_grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _heartbeat(self) -> None:
        interval = max(self.settings.ack_wait / 4, 0.05)
        while True:
            await asyncio.sleep(interval)
            waiting = [msg for puller in self.pullers for msg in puller.ready]  # delivered, not started yet
            for msg in [flight.msg for flight in self.inflight.values()] + waiting:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    def cancel_job(self, job_id: str) -> None:
        if not self.stage.cancellable:
            return
        for task, flight in list(self.inflight.items()):
            if flight.job == job_id and not task.done():
                log.info("stage %s: job %s cancelled; stopping its handler", self.stage.name, job_id)
                flight.job_cancelled = True
                task.cancel()

    # --- one message ------------------------------------------------------------------

    async def _handle(self, event: Any, ctx: Context, msg: Msg) -> bool:
        """Run the handler and send what it returns. When it fails because S3 or NATS is down
        (shared/breaker.py), wait for the dependency with the message still in flight (the
        heartbeat keeps it ours; no delivery is spent on the outage), then run it again. False:
        the worker is stopping first, the message was handed back."""
        while True:
            try:
                emits = await self.stage.handle(event, ctx)
                await self.services.send(emits, ctx.attempt, ctx.lane)
                return True
            except Exception as exc:
                back = await self.services.breakers.recovered(exc, self.stopping)
                if back is None:
                    raise
                if not back:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=self.settings.backoff_for(1))
                    return False
                log.info("stage %s: job %s runs again now that its dependency answers", self.stage.name, ctx.job)

    async def _process(self, flight: InFlight) -> None:
        msg = flight.msg
        stage = self.stage.name
        started = time.perf_counter()
        got = bus.delivered(msg.reply)
        delivery, seq = (got.delivery, got.stream_seq) if got is not None else (1, None)
        waited = max(0.0, time.time() - got.stored_ns / 1e9) if got is not None else 0.0  # since stored
        series = self._series
        series.waited[flight.lane](waited)
        outcome = "ok"
        try:
            event = self._decode(msg)
            flight.job = _job_named(event)
            record = await self._record(flight.job, event, msg) if flight.job else None
            if record is not None and record.final and (record.status != "cancelled" or self.stage.cancellable) \
                    and not self._reruns(event, record, seq):
                log.info("stage %s: job %s is %s; skipping", stage, flight.job, record.status)
                outcome = "skipped"
                await self.services.send(announcements(record, self.settings))  # a lost final event
                await self.services.publisher.ack(msg)
                return
            ctx = Context(self.services, stage, flight.job, delivery, stream_seq=seq,
                          attempt=record.attempt if record is not None else 1, lane=_lane_of(event, flight))
            if not await self._handle(event, ctx, msg):
                outcome = "retry"  # a dependency outage outlasted this worker: handed back
                return
            await self.services.publisher.ack(msg)
            series.succeeded()
        except asyncio.CancelledError:
            if flight.job_cancelled:
                outcome = "skipped"
                await self.services.publisher.ack(msg)
                return
            outcome = "retry"  # shutdown: hand it to another replica now
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:  # every failure gets an answer: _failed never raises
            outcome = await self._failed(msg, flight.job, exc, delivery)
        finally:
            elapsed = time.perf_counter() - started
            series.processing(elapsed)
            series.outcomes[outcome].inc()
            log.info("stage=%s job=%s outcome=%s delivery=%d seconds=%.3f",  # job "-": no job id could be read
                     stage, flight.job or "-", outcome, delivery, elapsed)

    async def _record(self, job: str, event: m.AnyEvent, msg: Msg) -> Job | None:
        """The job's record, from the process's watched cache (shared/recordcache.py) unless it
        matters that it is the bucket's latest: a producer's request (it may start a re-run), a
        message of a later attempt than the cached record knows, a final record (the skip path
        publishes what the record has not announced yet)."""
        records = self.services.records
        fresh = isinstance(event, self._requests)
        record = await records.get(job, fresh=fresh)
        if not fresh and (_attempt_of(msg) > (record.attempt if record is not None else 1)
                          or (record is not None and record.final)):
            record = await records.get(job, fresh=True)
        return record

    def _decode(self, msg: Msg) -> m.AnyEvent:
        """The event, or `Refused` with the reason in a producer's terms (m.explain: `not JSON`,
        or the field path and what is wrong with it)."""
        payload = msg.data
        if payload.startswith(UTF8_BOM):  # PowerShell and .NET write one before a file's text: RFC 8259 lets us skip it
            payload = payload[len(UTF8_BOM):]
        try:
            event = m.decode(payload)
        except (msgspec.MsgspecError, RecursionError) as exc:
            raise Refused(f"invalid event: {m.explain(exc)}", m.claim_of(payload, msg.subject)) from None
        if not isinstance(event, self.stage.accepts):
            raise Refused(
                f"invalid event: stage {self.stage.name} does not handle {type(event).__name__} "
                f"(type {type(event).__struct_config__.tag!r}) on {msg.subject}",
                m.Claim(id=event.id, type=str(type(event).__struct_config__.tag)),
            )
        return event

    def _reruns(self, event: m.AnyEvent, record: Job, seq: int | None) -> bool:
        """A producer's request for a failed or cancelled job starts its next attempt, unless it is
        the very message that started the current one (a redelivery): README, re-running a job."""
        return (isinstance(event, self.stage.reruns) and record.status in RERUNNABLE
                and seq is not None and record.started_by != seq)

    async def _failed(self, msg: Msg, job: str | None, exc: Exception, delivery: int) -> str:
        """Retry, or dead-letter and terminate; never raises. When recording the failure fails
        too (the DLQ, KV or the events stream refusing), the message is handed back with a delay
        and the outcome is "error": the next delivery records it (ids are derived, so the dead
        letter and the failed event still end up there once)."""
        stage = self.stage.name
        permanent = not isinstance(exc, Retry) and (isinstance(exc, Reject) or errors.is_permanent(exc))
        reason = _describe(exc)
        delay = self.settings.backoff_for(delivery)
        if isinstance(exc, Retry) and exc.delay is not None:
            delay = exc.delay
        try:
            if not permanent and delivery < self.settings.max_deliver:
                log.warning("stage %s: job %s delivery %d failed (%s); retry in %.1fs",
                            stage, job, delivery, reason, delay)
                await msg.nak(delay=delay)
                return "retry"
            if not permanent:
                reason = f"gave up after {delivery} deliveries: {reason}"
            log.error("stage %s: job %s failed: %s", stage, job, reason,
                      exc_info=not isinstance(exc, (Reject, Retry)) and not permanent)
            meta = msg.metadata
            claim = exc.claim if isinstance(exc, Refused) else None
            await dead_letter(
                self.services, stage=stage, job=job, error_class=type(exc).__name__, error=reason,
                permanent=permanent, delivery=delivery, stream=meta.stream, seq=meta.sequence.stream,
                subject=msg.subject, payload=msg.data, claim=claim,
            )
            await msg.term()
            return "failed" if permanent else "dead"
        except Exception as failure:
            log.error("stage %s: job %s: could not answer the message (%s) because %s: %s; handing it "
                      "back in %.1fs", stage, job, reason, type(failure).__name__, failure, delay)
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
            return "error"

    # --- crashes on the last delivery ------------------------------------------------

    async def _watch_max_deliveries(self, consumer: str | None = None) -> Any:
        """A worker that dies on the last delivery cannot dead-letter its message; the server's
        advisory can. A queue group makes one replica handle each advisory. One per lane's
        consumer (default: the interactive one, named after the stage)."""
        consumer = consumer or self.stage.name
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stage.stream}.{consumer}"

        async def letter(info: _MaxDeliveries) -> None:
            raw = await self.services.js.get_msg(info.stream, info.stream_seq)
            payload = raw.data or b""
            await dead_letter(
                self.services, stage=self.stage.name, job=_job_in(payload), error_class="MaxDeliveries",
                error=f"not acknowledged after {info.deliveries} deliveries (worker crashed, timed out, "
                      "or its failure could not be recorded)",
                permanent=False, delivery=info.deliveries, stream=info.stream, seq=info.stream_seq,
                subject=raw.subject or "", payload=payload,
            )
            await self.services.js.delete_msg(info.stream, info.stream_seq)

        async def with_retries(info: _MaxDeliveries) -> None:
            """The server will not deliver this message again: this is its last chance of an
            answer, so try a while (the DLQ or KV may be briefly unavailable)."""
            for attempt, pause in enumerate((*self.settings.retry_backoff, 0.0), start=1):
                try:
                    await letter(info)
                    return
                except nats.js.errors.NotFoundError:
                    return  # already dead-lettered and deleted by another replica
                except Exception as exc:
                    log.warning("stage %s: dead letter for %s:%d from the advisory failed (attempt %d: %s: %s)",
                                self.stage.name, info.stream, info.stream_seq, attempt, type(exc).__name__, exc)
                    await asyncio.sleep(pause)
            log.error("stage %s: gave up dead-lettering %s:%d; it stays in its stream",
                      self.stage.name, info.stream, info.stream_seq)

        async def on_advisory(adv: Msg) -> None:
            try:
                info = msgspec.json.decode(adv.data, type=_MaxDeliveries)
            except msgspec.MsgspecError:
                log.warning("stage %s: unreadable max-deliveries advisory", self.stage.name)
                return
            task = asyncio.create_task(with_retries(info))
            self._advisory_tasks.add(task)
            task.add_done_callback(self._advisory_tasks.discard)

        return await self.services.nc.subscribe(subject, queue=f"jetmedia-{consumer}-dlq", cb=on_advisory)


class _MaxDeliveries(msgspec.Struct):
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


async def dead_letter(
    services: Services, *, stage: str, job: str | None, error_class: str, error: str, permanent: bool,
    delivery: int, stream: str, seq: int, subject: str, payload: bytes, claim: m.Claim | None = None,
) -> None:
    """Record a failure where people look: JM_DLQ, the job's KV record, the failed-jobs event.

    Ids derive from the stream sequence and the job, so recording twice after a crash stores one
    copy. The original always fits: any message that fit its stream fits the DLQ (m.stored_original).
    Only a job that has a record is marked failed (no records for ids only a stray message named);
    its event goes through the outbox, so a job that was already final gets no `job.failed` (only
    its own final event, if that was never announced). A producer's request that did not decode
    (`claim`) but names a valid job id is that job's answer: a failed record, created if need be.
    When no record takes the failure, a `jetmedia.events.rejected` event is the answer. A refused
    message never changes a job that already has a record (a malformed copy must not fail a job
    that runs, nor rewrite the history of one that ended): it is answered with the rejected event."""
    create = False
    if job is None and claim is not None and claim.job is not None and m.is_job_id(claim.job) \
            and await services.jobs.get(claim.job) is None:
        job, create = claim.job, True
    error = error[:MAX_ERROR_TEXT]
    budget = max(services.nc.max_payload - DLQ_ENVELOPE, 1024)
    letter = m.DeadLetter(
        id=f"dlq:{stream}:{seq}", source=services.settings.source, time=m.now(), subject=job,
        data=m.DeadLetterData(
            stage=stage, error_class=error_class, error=error, permanent=permanent, delivery_count=delivery,
            stream=stream, stream_seq=seq, original_subject=subject[:MAX_ERROR_TEXT], job=job,
            **m.stored_original(payload, budget),
        ),
    )
    await bus.publish(services.js, f"{m.DLQ_PREFIX}.{stage}", letter)
    record = None
    if job:
        kind: JobKind = "export" if claim is not None and claim.kind == "export" else "asset"
        record = await services.jobs.fail(job, stage, error, kind, create=create)
        if record is not None:
            await services.send(announcements(record, services.settings))
    if record is None:
        answer = rejected(services, letter, claim or m.claim_of(payload, subject))
        await bus.publish(services.js, m.EVENTS_REJECTED, answer)


def rejected(services: Services, letter: m.DeadLetter, claim: m.Claim) -> m.EventRejected:
    """The answer for a refused message no job record can carry (its id derives from the letter's)."""
    data = letter.data
    return m.EventRejected(
        id=f"rejected:{data.stream}:{data.stream_seq}", source=services.settings.source, time=m.now(),
        data=m.EventRejectedData(
            reason=data.error, stage=data.stage, original_subject=data.original_subject, original_id=claim.id,
            original_type=claim.type, job=claim.job or data.job, dead_letter=letter.id,
        ),
    )


async def _hand_back(msg: Msg, expired: float) -> None:
    """Give a message back for another replica, redelivered once our last pull request has
    expired: a plain nak would hand it straight back to that still-open request (and so to us,
    after we stopped listening), spending a delivery each time."""
    with contextlib.suppress(Exception):
        await msg.nak(delay=max(0.0, expired - time.monotonic()) + 0.25)


def delivery_count(msg: Msg) -> int:
    """Which delivery of its message this is (1 when the metadata cannot say)."""
    got = bus.delivered(msg.reply)
    return got.delivery if got is not None else 1


class _Series:
    """A stage's metric series, looked up once (labels() takes a lock per call). Handlers in
    progress are read when scraped, not written per message; the last success is set (a plain
    gauge: a CI run once scraped 0 from the read-at-scrape version, cause not found)."""

    _workers: dict[str, list[Worker]] = {}  # stage -> this process's running workers of it

    def __init__(self, stage: str, worker: Worker) -> None:
        self.stage = stage
        self.waited = {lane: metrics.observer(metrics.queue_wait_seconds.labels(stage, lane)) for lane in bus.LANES}
        self.processing = metrics.observer(metrics.processing_seconds.labels(stage))
        self.outcomes = {outcome: metrics.messages_total.labels(stage, outcome) for outcome in metrics.OUTCOMES}
        if stage not in self._workers:
            workers = self._workers[stage] = []
            metrics.in_progress.labels(stage).set_function(lambda: float(sum(len(w.inflight) for w in workers)))
        self._workers[stage].append(worker)
        self.last_ok = metrics.last_success.labels(stage)

    def succeeded(self) -> None:
        self.last_ok.set(time.time())

    @classmethod
    def forget(cls, stage: str, worker: Worker) -> None:
        """A stopped worker no longer counts in progress (the stage's last success stays)."""
        with contextlib.suppress(ValueError):
            cls._workers.get(stage, []).remove(worker)


def _attempt_of(msg: Msg) -> int:
    """The job attempt a message belongs to: a re-run's messages carry `Nats-Msg-Id` `{id}#{attempt}`."""
    msg_id = (msg.headers or {}).get(bus.MSG_ID, "")
    _, mark, number = msg_id.rpartition("#")
    return int(number) if mark and number.isdigit() else 1


def _describe(exc: BaseException) -> str:
    text = (str(exc) or type(exc).__name__)[:MAX_ERROR_TEXT]
    if errors.is_transient(exc):
        return f"storage temporarily unavailable: {text}"
    return text


def _job_named(event: m.AnyEvent) -> str | None:
    """The job an event belongs to, refused when it is no KV key (then nothing touches KV for it)."""
    job = m.job_of(event)
    if job is not None and not m.is_job_id(job):
        raise Reject(f"message names job {job[:100]!r}, which is not a valid job id "
                     "(dot-separated tokens of [-_=a-zA-Z0-9], at most 200 characters)")
    return job


def _lane_of(event: m.AnyEvent, flight: InFlight) -> str:
    """A producer's request names its job's lane (`priority`, else an explicit `….bulk` /
    `….interactive` subject, else asset jobs interactive and exports bulk); every other message
    is in the lane it came from, and what its handler emits inherits that."""
    explicit = bus.lane_of_subject(flight.msg.subject)
    if isinstance(event, (m.AssetUploaded, m.ExportRequested)):
        default = BULK if isinstance(event, m.ExportRequested) else INTERACTIVE
        return event.data.priority or explicit or default
    return explicit or flight.lane


def _job_in(payload: bytes) -> str | None:
    """The job of a raw payload, when it decodes and names a valid one."""
    try:
        job = m.job_of(m.decode(payload))
    except Exception:  # not decodable (or nested too deep): no job
        return None
    return job if job is not None and m.is_job_id(job) else None


async def run_stages(services: Services, stages: Sequence[Stage], stopping: asyncio.Event) -> None:
    """Run several stages in this process until `stopping` is set, then drain them all."""
    workers = [Worker(stage, services) for stage in stages]
    try:
        await asyncio.gather(*(worker.run(stopping) for worker in workers))
    finally:
        for worker in workers:
            with contextlib.suppress(ValueError):
                services.workers.remove(worker)
