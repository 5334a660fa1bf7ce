"""One watch of the jobs bucket per gateway process, fanned out in memory to the SSE streams.

A KV watch per SSE stream made one consumer on the bucket's stream per client, which nats-server
keeps for the watch's inactive threshold after the client leaves; past 1,000 of them (the server's
default per stream) new watches failed (docs/benchmarks.md, "Gateway"). Here the process holds one
ordered push consumer from "now on" (updates only, nothing replayed), and each stream registers a
`Listener` for its job id: a bounded queue of (revision, raw record). A stream that does not keep
up (its client reads too slowly) is ended rather than buffered without limit; so is every stream
when the watch is restarted (it may have missed updates in between) or stopped. Ending is never
lossy: the client reconnects with Last-Event-ID and reads the current record first (sse.py).

Health: nats-py's ordered consumer re-creates itself from the next sequence after missed
heartbeats; a consumer that stays gone (or a closed connection) restarts the watch here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from shared.jobs import BUCKET

log = logging.getLogger("jetmedia.gateway")
_PREFIX = f"$KV.{BUCKET}."
_DELETES = ("DEL", "PURGE")
Update = tuple[int, bytes]  # (KV revision, raw record)


class Listener:
    """One SSE stream's share of the feed: updates of one job, in revision order, until `ended`."""

    __slots__ = ("ended", "job", "queue")

    def __init__(self, job: str, size: int) -> None:
        self.job = job
        self.queue: asyncio.Queue[Update | None] = asyncio.Queue(size)
        self.ended = False  # the stream must end (no more updates will come): client too slow, watch restarted


class JobFeed:
    def __init__(self, nc: NATS, js: JetStreamContext, *, queue_size: int = 256, check_every: float = 5.0) -> None:
        self.nc = nc
        self.js = js
        self.queue_size = queue_size
        self.check_every = check_every
        self._listeners: dict[str, set[Listener]] = {}
        self._up = asyncio.Event()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0  # watches made after the first (a metric for tests and logs)
        self.dropped = 0  # streams ended because their client read too slowly

    async def start(self, timeout: float = 30.0) -> None:
        """Start watching; returns once the first watch is up."""
        self._task = asyncio.create_task(self._supervise(), name="gateway-job-feed")
        await self.ready(timeout)

    async def ready(self, timeout: float) -> bool:
        """Wait (up to `timeout`) until the watch is up; False if it is not."""
        if not self._up.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._up.wait()
        return self._up.is_set()

    async def stop(self) -> None:
        """Stop the watch and end every stream (gateway shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_watch()

    def listen(self, job: str) -> Listener:
        """Register a stream for `job`'s updates from now on. Register before reading the record:
        then an update is in the record read, or in the queue, or both (deduped by revision)."""
        listener = Listener(job, self.queue_size)
        if not self._up.is_set():  # no watch right now: the stream ends at once, the client retries
            listener.ended = True
            listener.queue.put_nowait(None)
            return listener
        self._listeners.setdefault(job, set()).add(listener)
        return listener

    def leave(self, listener: Listener) -> None:
        waiting = self._listeners.get(listener.job)
        if waiting is not None:
            waiting.discard(listener)
            if not waiting:
                del self._listeners[listener.job]

    async def consumer(self) -> str | None:
        """The name of the watch's consumer on the bucket's stream (None: no watch right now)."""
        return None if self._sub is None else (await self._sub.consumer_info()).name

    @property
    def listeners(self) -> int:
        return sum(len(s) for s in self._listeners.values())

    def _end(self, listener: Listener) -> None:
        listener.ended = True
        self.leave(listener)
        with contextlib.suppress(asyncio.QueueFull):  # a full queue: the stream sees `ended` at its next get
            listener.queue.put_nowait(None)

    async def _changed(self, msg: Msg) -> None:
        job = msg.subject[len(_PREFIX):]
        waiting = self._listeners.get(job)
        if not waiting or (msg.headers and msg.headers.get("KV-Operation") in _DELETES):
            return
        update = (msg.metadata.sequence.stream, msg.data)
        for listener in list(waiting):
            try:
                listener.queue.put_nowait(update)
            except asyncio.QueueFull:
                self.dropped += 1
                log.info("gateway: SSE client of %s too slow (%d updates queued): stream ended", job,
                         self.queue_size)
                self._end(listener)

    async def _supervise(self) -> None:
        first = True
        while True:
            try:
                self._sub = await self.js.subscribe(f"{_PREFIX}>", stream=f"KV_{BUCKET}", cb=self._changed,
                                                    ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
            except Exception as exc:
                log.warning("gateway: cannot watch the jobs bucket (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            if not first:
                self.restarts += 1
                log.info("gateway: jobs bucket watch restarted")
            first = False
            self._up.set()
            try:
                await self._until_broken()
            finally:
                await self._drop_watch()

    async def _until_broken(self) -> None:
        """Return once the watch looks dead: the connection closed, or its consumer gone on two
        checks in a row (one miss may be nats-py re-creating it)."""
        misses = 0
        while misses < 2:
            await asyncio.sleep(self.check_every)
            if self.nc.is_closed:
                return
            try:
                await self._sub.consumer_info()
                misses = 0
            except Exception as exc:
                misses += 1
                log.debug("gateway: jobs bucket watch check failed: %s", exc)
        log.warning("gateway: jobs bucket watch lost; ending SSE streams (clients resume) and watching anew")

    async def _drop_watch(self) -> None:
        """Forget the watch and end every stream registered on it (they may miss what comes next)."""
        self._up.clear()
        sub, self._sub = self._sub, None
        for waiting in list(self._listeners.values()):
            for listener in list(waiting):
                self._end(listener)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
