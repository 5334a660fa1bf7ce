"""Publishing with a PubAck, cheaper per message than nats-py's `js.publish`.

nats-py answers each JetStream publish through a full request: a new inbox token, a future
wrapped in `asyncio.wait_for` (a timer per message) and the PubAck parsed with `json.loads`.
At bus speed that was a third of the runtime's cost per message (docs/benchmarks.md, "Bus").
Here one subscription takes every PubAck of the process, futures wait without timers of their
own (one sweep a second fails those past their deadline) and msgspec reads the answer. The
guarantee is unchanged: the caller returns only once the server has stored the message.

Two more per-message costs are cut the same way (docs/benchmarks.md, "Bus"): the message goes out
as one `HPUB` line built here (nats-py's `publish` validates both subjects with a regex and builds
the header block key by key for every message), and a PubAck is answered where nats-py's read
loop hands it over, not through the subscription's queue and a task switch of its own. Both use
nats-py's connection internals (`_send_command`, `_flush_pending`, a subscription's pending
queue); `_fast_path` checks they are there and otherwise everything goes through nats-py's public
calls, as before. tests/unit/test_puback.py holds the bytes to nats-py's own for the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .bus import MSG_ID

log = logging.getLogger("jetmedia.puback")


class _Ack(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(_Ack).decode
_SUBJECT_OK = re.compile(r"[^\s]+")  # what nats-py's publish accepts (no whitespace, CR or LF, not empty)


def _fast_path(nc: NATS) -> bool:
    """Whether this nats-py has the internals the direct path uses (else: its public calls)."""
    return all(hasattr(nc, name) for name in ("_send_command", "_flush_pending", "_flush_queue", "_max_payload",
                                              "stats", "is_draining_pubs"))


def hpub(subject: bytes, reply: bytes, msg_id: bytes, payload: bytes) -> bytes:
    """The `HPUB` command nats-py's `publish(subject, payload, reply=, headers={Nats-Msg-Id: id})`
    writes, built in one step."""
    header = b"NATS/1.0\r\nNats-Msg-Id: %b\r\n\r\n" % msg_id
    return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (subject, reply, len(header), len(header) + len(payload),
                                               header, payload)


def ack_command(reply: bytes) -> bytes:
    """The `PUB` command nats-py's `msg.ack()` writes (no reply subject: two spaces, no payload)."""
    return b"PUB %b  0\r\n\r\n" % reply


class _Sink:
    """Stands in for a subscription's message queue: nats-py's read loop `put_nowait`s each
    message, which is answered right there (no queue, no task switch per PubAck)."""

    def __init__(self, sub: Any, answer: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._answer = answer

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)  # nothing waits in a queue
        try:
            self._answer(msg)
        except Exception:  # never into nats-py's read loop (its connection would be torn down)
            log.exception("PubAck not handled")

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        pass


class Publisher:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = nc.new_inbox()
        self._reply = f"{self._prefix}.".encode()
        self._waiting: dict[str, tuple[asyncio.Future[bool], float]] = {}
        self._tokens = itertools.count()
        self._sub: Any = None
        self._sweeper: asyncio.Task[None] | None = None
        self._fast = _fast_path(nc)
        self._subjects: dict[str, bytes] = {}  # subjects checked once (a process publishes to a handful)

    @property
    def started(self) -> bool:
        return self._sub is not None

    async def start(self) -> None:
        if self._fast:
            self._sub = await self.nc.subscribe(f"{self._prefix}.*")  # no callback: no task, no queue reader
            if isinstance(getattr(self._sub, "_pending_queue", None), asyncio.Queue):
                self._sub._pending_queue = _Sink(self._sub, self._answer)
            else:  # not the nats-py this was written for: answer through a callback after all
                await self._sub.unsubscribe()
                self._fast = False
        if not self._fast:
            self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._answered)
        self._sweeper = asyncio.create_task(self._sweep(), name="puback-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._sub = None
        for future, _deadline in self._waiting.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())
        self._waiting.clear()

    async def publish(self, subject: str, payload: bytes, msg_id: str, timeout: float = 5.0) -> bool:
        """Publish with `Nats-Msg-Id` and wait for the PubAck; False when the server dropped a
        duplicate. Raises what `js.publish` raises: nats.errors.TimeoutError, NoRespondersError,
        js APIError (and nats-py's publish errors: closed, draining, too big, bad subject)."""
        token = str(next(self._tokens))
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (future, time.monotonic() + timeout)
        try:
            command = self._command(subject, payload, token, msg_id)
            nc = self.nc
            if command is None:
                await nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers={MSG_ID: msg_id})
            else:  # what nats-py's publish does after its checks
                nc.stats["out_msgs"] += 1
                nc.stats["out_bytes"] += len(payload)
                await nc._send_command(command)
                if nc._flush_queue is not None and nc._flush_queue.empty():
                    await nc._flush_pending()
            return await future
        finally:
            self._waiting.pop(token, None)

    def _command(self, subject: str, payload: bytes, token: str, msg_id: str) -> bytes | None:
        """The `HPUB` nats-py would write for a connected client; None when nats-py's `publish`
        itself should answer (it raises or buffers as for any other message, rewrites odd ids)."""
        nc = self.nc
        encoded = self._subjects.get(subject)
        if encoded is None and _SUBJECT_OK.fullmatch(subject):
            encoded = self._subjects[subject] = subject.encode()
        if (not self._fast or encoded is None or not msg_id or "\r" in msg_id or "\n" in msg_id
                or msg_id != msg_id.strip() or not nc.is_connected or nc.is_draining_pubs
                or len(payload) > nc._max_payload):
            return None
        return hpub(encoded, self._reply + token.encode(), msg_id.encode(), payload)

    async def ack(self, msg: Msg) -> None:
        """`msg.ack()`, written directly (`PUB <reply> 0`, as nats-py writes it) when it can be:
        the same checks (a reply subject, not acknowledged before), the same flush."""
        nc = self.nc
        reply = msg.reply
        if (not self._fast or not reply or getattr(msg, "_ackd", True) or not nc.is_connected
                or nc.is_draining_pubs or not _SUBJECT_OK.fullmatch(reply)):
            await msg.ack()  # raises what it raises (no reply, acknowledged already, closed)
            return
        nc.stats["out_msgs"] += 1
        await nc._send_command(ack_command(reply.encode()))
        msg._ackd = True
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    async def _answered(self, msg: Msg) -> None:
        self._answer(msg)

    def _answer(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject.rpartition(".")[2])
        if waiting is None or waiting[0].done():
            return
        future = waiting[0]
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.errors.NoRespondersError())
            return
        try:
            ack = _decode(msg.data)
        except msgspec.MsgspecError as exc:
            future.set_exception(nats.js.errors.Error(f"unreadable PubAck: {exc}"))
            return
        if ack.error is not None:
            try:
                nats.js.errors.APIError.from_error(ack.error)  # raises the typed error
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_exception(nats.js.errors.Error(f"PubAck error: {ack.error}"))
            return
        future.set_result(not ack.duplicate)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for future, deadline in list(self._waiting.values()):
                if deadline < now and not future.done():
                    future.set_exception(nats.errors.TimeoutError())
