"""Priority lanes on the worker side: pulling each lane's consumer, choosing which lane a free
slot goes to, and running CPU work interactive-first.

Why our own pull requests instead of nats-py's `fetch`: a worker must ask the interactive lane
"what do you have *now*" and then the bulk lane, without waiting on an empty lane; nats-py's
fetch turns every request on an empty queue into a lingering one (it sends `expires`). Here a
`take` is a no-wait request (answered at once: the messages there are, then 404), and only an
idle worker leaves one lingering request (batch 1) open per lane, so a message on either lane
wakes it. Everything a lane delivers lands in its `ready` queue; the worker starts from there.
Nothing is started beyond the worker's concurrency: the one message a lingering request may
deliver while every slot is taken waits in `ready` (heartbeated like running work).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .bus import BULK, INTERACTIVE

TAKE_TIMEOUT = 5.0  # seconds a no-wait pull may take to be answered before NATS counts as unresponsive
LINGER_SLACK = 0.5  # seconds after its expiry a lingering request is given up for lost (no 408 came)


class Puller:
    """One lane's durable consumer. Replies come to `{inbox}.n` (no-wait) and `{inbox}.l`
    (lingering); `on_message(puller, msg)` gets every delivered message."""

    def __init__(self, nc: NATS, stream: str, consumer: str, lane: str,
                 on_message: Callable[[Puller, Msg], None], on_wake: Callable[[], None]) -> None:
        self.nc = nc
        self.stream = stream
        self.consumer = consumer
        self.lane = lane
        self.ready: deque[Msg] = deque()
        self.linger_until = 0.0  # monotonic time our open lingering request ends on the server (0: none open)
        self._on_message = on_message
        self._on_wake = on_wake
        self._inbox = nc.new_inbox()
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._subs: list[Any] = []
        self._take_left = 0
        self._take_done: asyncio.Event | None = None

    @property
    def _deliver(self) -> str:
        """Where lingering requests are answered (tests send their own requests there)."""
        return f"{self._inbox}.l"

    async def open(self) -> None:
        """One subscription per kind of request: a delivered message carries its own subject,
        not the inbox, so only the subscription tells which request it answers."""
        async def nowait(msg: Msg) -> None:
            self._arrived(msg, nowait=True)

        async def lingering(msg: Msg) -> None:
            self._arrived(msg, nowait=False)

        self._subs = [await self.nc.subscribe(f"{self._inbox}.n", cb=nowait),
                      await self.nc.subscribe(self._deliver, cb=lingering)]

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    @property
    def lingering(self) -> bool:
        if self.linger_until and time.monotonic() > self.linger_until + LINGER_SLACK:
            self.linger_until = 0.0  # its 408 was lost (a reconnect): the request is over anyway
        return self.linger_until > 0.0

    async def take(self, batch: int) -> int:
        """Ask for up to `batch` messages available now; they land in `ready`. Returns how many
        arrived. Raises TimeoutError when the server does not answer."""
        if batch <= 0:
            return 0
        before = len(self.ready)
        done = self._take_done = asyncio.Event()
        self._take_left = batch
        await self.nc.publish(self._next, json.dumps({"batch": batch, "no_wait": True}).encode(),
                              reply=f"{self._inbox}.n")
        try:
            await asyncio.wait_for(done.wait(), TAKE_TIMEOUT)
        finally:
            self._take_done = None
        return len(self.ready) - before

    async def linger(self, seconds: float) -> None:
        """Leave one request (batch 1) open for `seconds`: the next message of this lane wakes us."""
        if self.lingering:
            return
        self.linger_until = time.monotonic() + seconds
        request = {"batch": 1, "expires": int(seconds * 1e9)}
        await self.nc.publish(self._next, json.dumps(request).encode(), reply=self._deliver)

    def _arrived(self, msg: Msg, nowait: bool) -> None:
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is not None and not msg.reply:
            if status == "100":  # idle heartbeat / flow control: nothing ends
                return
            if nowait:  # 404 no messages, 408, 409: this request is over (take() is waiting for that)
                self._end_take()
            else:
                self.linger_until = 0.0
                self._on_wake()
            return
        if nowait:
            self._take_left -= 1
            if self._take_left <= 0:
                self._end_take()
        else:
            self.linger_until = 0.0  # batch 1: delivered, so the request is over
        self._on_message(self, msg)
        self._on_wake()

    def _end_take(self) -> None:
        if self._take_done is not None:
            self._take_done.set()


class BulkShare:
    """Interactive first, bulk never starved: of the messages a worker starts while the bulk lane
    has work, at least `share` are bulk. `owed` counts the bulk starts that share calls for and
    that have not happened yet; it is forgotten when the bulk lane turns out empty (then the
    interactive starts took nothing from bulk) and never goes below zero (bulk running alone
    earns it no head start to be paid back by a later interactive burst)."""

    def __init__(self, share: float) -> None:
        self.share = min(max(share, 0.0), 1.0)
        self.owed = 0.0

    def quota(self, slots: int) -> int:
        """How many of the next `slots` starts go to bulk (when it has that many)."""
        return min(slots, int(self.owed + self.share * slots + 1e-9))

    def started(self, interactive: int, bulk: int) -> None:
        self.owed = max(0.0, self.owed + self.share * (interactive + bulk) - bulk)

    def bulk_empty(self) -> None:
        self.owed = 0.0


class PriorityPool:
    """The CPU thread pool, interactive first. A plain ThreadPoolExecutor is FIFO: a photo's
    encode would wait behind every bulk encode already queued. Here a free thread takes queued
    interactive work first, and while interactive work runs it starts no bulk work (a thread may
    stay idle: the person's job gets the cores, the event loop and S3 to itself as far as we can
    give them); bulk keeps its share (BulkShare) of the starts, so it is never starved. `threads`
    run at once, plus one more for interactive work while bulk work runs: a photo never waits
    for a running bulk encode to end (it shares the cores with it instead)."""

    def __init__(self, threads: int, share: float = 0.25, name: str = "jetmedia-cpu") -> None:
        self._lock = threading.Condition()
        self._queues: dict[str, deque[tuple[Callable[[], Any], Future[Any]]]] = {INTERACTIVE: deque(), BULK: deque()}
        self._running = {INTERACTIVE: 0, BULK: 0}
        self._share = BulkShare(share)
        self._closed = False
        self._bulk_threads = max(threads, 1)
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{n}", daemon=True)
                         for n in range(self._bulk_threads + 1)]
        for thread in self._threads:
            thread.start()

    def submit(self, lane: str, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("CPU pool is shut down")
            self._queues[BULK if lane == BULK else INTERACTIVE].append((fn, future))
            self._lock.notify_all()
        return future

    def _next(self) -> tuple[str, Callable[[], Any], Future[Any]] | None:
        """Under the lock: the lane and work a free thread runs now, None to wait."""
        interactive, bulk = self._queues[INTERACTIVE], self._queues[BULK]
        running = self._running[INTERACTIVE] + self._running[BULK]
        bulk_may = bool(bulk) and running < self._bulk_threads
        # the extra thread is interactive work's only while bulk work holds the others
        interactive_may = bool(interactive) and (running < self._bulk_threads or (
            self._running[BULK] > 0 and running <= self._bulk_threads))
        if bulk_may and ((not interactive and not self._running[INTERACTIVE]) or self._share.quota(1)):
            lane = BULK
        elif interactive_may:
            lane = INTERACTIVE
        else:
            return None
        fn, future = self._queues[lane].popleft()
        if bulk or lane == BULK:
            self._share.started(lane == INTERACTIVE, lane == BULK)
        else:
            self._share.bulk_empty()
        return lane, fn, future

    def _run(self) -> None:
        while True:
            with self._lock:
                picked = self._next()
                while picked is None:
                    if self._closed:
                        return
                    self._lock.wait()
                    picked = self._next()
                lane, fn, future = picked
                self._running[lane] += 1
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn()
                    except BaseException as exc:  # handed to the awaiting coroutine
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                with self._lock:
                    self._running[lane] -= 1
                    self._lock.notify_all()

    def shutdown(self) -> None:
        """Cancel what has not started; running work finishes on its (daemon) thread."""
        with self._lock:
            self._closed = True
            for waiting in self._queues.values():
                while waiting:
                    waiting.popleft()[1].cancel()
            self._lock.notify_all()


__all__ = ["BULK", "INTERACTIVE", "BulkShare", "PriorityPool", "Puller"]
