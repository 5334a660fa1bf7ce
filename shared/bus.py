"""Connection, streams and consumers: the JetStream layout, declared once.

One stream per stage keeps each stage's queue depth visible and its limits its own.
`ensure_layout` is create-or-update, so every service calls it at start-up and the layout
converges whichever process starts first.

Priority lanes (README "Priority lanes"): a work stream's subjects are its base subjects plus
`{base}.interactive` and `{base}.bulk`; a message on the bare base subject is interactive, so
producers' subjects keep working. Each stage has one durable consumer per lane with subject
filters that never overlap (work-queue streams refuse overlapping consumers): the interactive
one keeps the stage's name, so upgrading from the single-consumer layout narrows that consumer
in place (its queue and in-flight messages stay where they are) before the bulk one is added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from . import messages as m
from .config import ConfigError, Settings, _strip_userinfo

log = logging.getLogger("jetmedia.bus")
T = TypeVar("T")
STARTUP_WAIT = 60.0  # seconds a process keeps trying to connect and to create its layout at start-up


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    work_queue: bool
    durable: str | None  # the stage consumer that owns it (work-queue streams)
    max_age: str | None = None  # name of the Settings field holding the age limit
    lanes: bool = False  # an interactive and a bulk lane (one consumer each)

    def stream_subjects(self) -> list[str]:
        """What the stream stores: the base subjects and, with lanes, each with a lane token."""
        if not self.lanes:
            return list(self.subjects)
        return [*self.subjects, *(f"{base}.{lane}" for lane in LANES for base in self.subjects)]

    def filters(self, lane: str) -> list[str]:
        """The lane consumer's subject filters: bare and `.interactive` subjects, or `.bulk` ones."""
        if lane == BULK:
            return [f"{base}.{BULK}" for base in self.subjects]
        return [*self.subjects, *(f"{base}.{INTERACTIVE}" for base in self.subjects)]

    def consumers(self) -> list[tuple[str, str]]:
        """(lane, durable consumer name) of the stage that owns this stream, interactive first."""
        if self.durable is None:
            return []
        if not self.lanes:
            return [(INTERACTIVE, self.durable)]
        return [(lane, consumer_name(self.durable, lane)) for lane in LANES]


INTERACTIVE = "interactive"
BULK = "bulk"
LANES = (INTERACTIVE, BULK)


def consumer_name(durable: str, lane: str) -> str:
    """The interactive lane keeps the stage's own consumer name (the pre-lanes layout's)."""
    return durable if lane == INTERACTIVE else f"{durable}-{lane}"


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("JM_UPLOAD", ("jetmedia.upload.*",), True, "upload", lanes=True),
    StreamSpec("JM_CHUNK", (m.CHUNK,), True, "chunk", lanes=True),
    StreamSpec("JM_VARIANT", (m.VARIANT,), True, "variant", lanes=True),
    StreamSpec("JM_TRANSCODE", (m.TRANSCODE,), True, "transcode", lanes=True),
    StreamSpec("JM_FINALIZE", ("jetmedia.finalize.*",), True, "finalize", lanes=True),
    StreamSpec("JM_EVENTS", ("jetmedia.events.>",), False, None, "events_max_age"),
    StreamSpec("JM_DLQ", (m.DLQ_PREFIX + ".>",), False, None, "dlq_max_age"),
)
STREAM_BY_NAME = {spec.name: spec for spec in STREAMS}
MSG_ID = "Nats-Msg-Id"


class Delivered(NamedTuple):
    """What a JetStream message's reply subject says about this delivery of it."""

    delivery: int  # 1 for the first
    stream_seq: int
    stored_ns: int  # when the server stored the message, ns since the epoch


def delivered(reply: str | None) -> Delivered | None:
    """Read from the reply subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
    seq>.<ns>.<pending>`, or the form with domain and account hash after `ACK`), as nats-py's
    `msg.metadata` reads it, at a tenth of the cost: that builds a datetime and three objects
    (~3 µs, at bus speed several % of a message's CPU). None: no JetStream delivery."""
    tokens = reply.split(".") if reply else []
    count = len(tokens)
    if not (count == 9 or count >= 11) or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    at = 4 if count == 9 else 6
    try:
        return Delivered(int(tokens[at]) or 1, int(tokens[at + 1]), int(tokens[at + 3]))
    except ValueError:
        return None


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching (`*` one token, `>` the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for n, token in enumerate(want):
        if token == ">":
            return len(have) > n
        if n >= len(have) or (token != "*" and token != have[n]):
            return False
    return len(want) == len(have)


_LANED: dict[str, bool] = {}


def laned(subject: str) -> bool:
    """Whether `subject` is a base subject of a stream with lanes (cached: a handful of subjects)."""
    found = _LANED.get(subject)
    if found is None:
        found = _LANED[subject] = any(
            _matches(base, subject) for spec in STREAMS if spec.lanes for base in spec.subjects)
    return found


def lane_subject(subject: str, lane: str) -> str:
    """Where a message of `lane` goes: bulk gets `{subject}.bulk`; interactive stays on the bare
    subject (as do subjects of streams without lanes, such as the events)."""
    return f"{subject}.{BULK}" if lane == BULK and laned(subject) else subject


def lane_of_subject(subject: str) -> str | None:
    """The lane a subject names explicitly (`….bulk`, `….interactive`), None for a bare one."""
    base, _, last = subject.rpartition(".")
    return last if last in LANES and laned(base) else None


def base_subject(subject: str) -> str:
    """The subject without its lane token."""
    return subject.rpartition(".")[0] if lane_of_subject(subject) else subject


OUTAGE_LOG_EVERY = 60.0  # seconds between repeated "still disconnected" lines of one outage


class Unreachable(ConnectionError):
    """NATS could not be reached within the connect wait; the message names the URL and the cause."""


class _Outage:
    """An outage is logged once, then at most once a minute: nats-py reports every reconnect
    attempt (twice a second), which buried everything else in the log."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.last = 0.0
        self.repeats = 0

    def report(self, text: str) -> None:
        now = time.monotonic()
        if self.since is not None and now - self.last < OUTAGE_LOG_EVERY:
            self.repeats += 1
            return
        if self.since is None:
            self.since = now
            log.warning("%s", text)
        else:
            log.warning("%s (still; %d more reports in %.0f s)", text, self.repeats, now - self.since)
        self.last, self.repeats = now, 0

    def over(self) -> None:
        if self.since is not None:
            log.info("nats: reconnected after %.0f s", time.monotonic() - self.since)
        else:
            log.info("nats: reconnected")
        self.since = None


def describe_cause(exc: BaseException) -> str:
    """A socket or nats-py error as a few words for a person."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, nats.errors.TimeoutError)):
        return "no answer"
    if isinstance(exc, nats.errors.AuthorizationError):
        return "authorization violation"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].removeprefix("nats: ")


class _Refused(Exception):
    """Raised from the error callback to end a person's connect at the first refused credentials."""


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower()


async def connect(settings: Settings, name: str = "jetmedia", *, wait: float = STARTUP_WAIT,
                  quiet: bool = False) -> NATS:
    """Connect with whatever credentials the settings carry; once connected, reconnect forever
    (an outage is logged once, then every minute).

    The first connection is tried for at most `wait` seconds (a server or cluster still starting),
    then `Unreachable` names the URL and the last cause: a process never hangs on a NATS that is
    not there. `quiet`: say nothing while trying (people's commands report the one line themselves);
    refused credentials raise ConfigError (exit 2: retrying will not fix them)."""
    retry_every = 0.5
    options: dict[str, object] = {
        "servers": settings.nats_url.split(","),
        "name": name,
        "max_reconnect_attempts": max(1, math.ceil(wait / retry_every)),
        "reconnect_time_wait": retry_every,
        "connect_timeout": max(1, min(5, math.ceil(wait))),
        "drain_timeout": 5,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    if settings.nats_tls_ca:
        options["tls"] = ssl.create_default_context(cafile=settings.nats_tls_ca)

    outage = _Outage()
    credentials = bool(settings.nats_user or settings.nats_token or settings.nats_creds)
    causes: list[BaseException] = []
    connected = False

    async def on_error(exc: Exception) -> None:
        if not connected:
            causes[:] = [exc]
            if quiet:
                log.debug("nats: %s", exc)
                if _refused(exc) or (credentials and isinstance(exc, ConnectionResetError)):
                    raise _Refused  # out of nats-py's connect loop: retrying will not change the answer
                return
        outage.report(f"nats: {where}: {describe_cause(exc)}; reconnecting")

    async def on_disconnect() -> None:
        if not (client.is_closed or client.is_draining):
            outage.report(f"nats: disconnected from {where}; reconnecting")

    async def on_reconnect() -> None:
        outage.over()

    where = _strip_userinfo(settings.nats_url)
    client = NATS()
    try:
        await asyncio.wait_for(client.connect(
            error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, **options  # type: ignore[arg-type]
        ), wait)
    except (TimeoutError, OSError, nats.errors.Error, _Refused) as exc:
        with contextlib.suppress(Exception):
            await client.close()
        cause = causes[-1] if causes else exc
        if isinstance(cause, ConnectionResetError) and isinstance(exc, _Refused):
            # the server's "-ERR Authorization Violation" can be lost to the reset of the close that follows it
            raise ConfigError(f"NATS at {where} closed the connection during the handshake (connection reset; "
                              "refused credentials, usually): check JETMEDIA_NATS_USER / JETMEDIA_NATS_PASSWORD / "
                              "JETMEDIA_NATS_TOKEN / JETMEDIA_NATS_CREDS") from None
        if _refused(cause):
            raise ConfigError(f"NATS at {where} refused our credentials (authorization violation): check "
                              "JETMEDIA_NATS_USER / JETMEDIA_NATS_PASSWORD / JETMEDIA_NATS_TOKEN / JETMEDIA_NATS_CREDS"
                              ) from None
        raise Unreachable(f"cannot reach NATS at {where} within {wait:g} s: {describe_cause(cause)}") from None
    connected = True
    client.options["max_reconnect_attempts"] = -1  # nats-py reads it at each reconnect
    return client


async def round_trip(nc: NATS, timeout: float) -> None:
    """What `nc.flush(timeout)` promises (all written so far has reached the server, which
    answers), without its flaw: a flush that times out (a server stalled for a few seconds)
    leaves its cancelled future in nats-py's PONG queue, and the PONG that comes once the server
    is back raises InvalidStateError in the read loop, which then stops for good: the
    connection still says it is up and hears nothing (no PubAck, no message) until the
    stale-connection check, minutes later. The JetStream account info request is answered by
    the server (every jetmedia user may ask it) and its timeout cleans up after itself.
    Raises nats.errors.TimeoutError."""
    await nc.request("$JS.API.INFO", b"", timeout=timeout)


def _startup_transient(exc: BaseException) -> bool:
    """What a JetStream API call answers while a fresh server or cluster is still electing
    leaders: timeouts, no responders, 503s, "no suitable peers" (the peers are not known yet)."""
    if isinstance(exc, (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                        nats.errors.ConnectionReconnectingError, nats.js.errors.ServiceUnavailableError)):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code in (500, 503) or exc.err_code in (10005, 10008, 10074)
    return False


async def retrying(what: str, call: Callable[[], Awaitable[T]], wait: float = STARTUP_WAIT) -> T:
    """Run a start-up step (stream, consumer, KV creation), retrying transient JetStream answers
    with backoff for up to `wait` seconds; each retry is logged, the last error is raised."""
    deadline = time.monotonic() + wait
    delay = 0.25
    while True:
        try:
            return await call()
        except Exception as exc:
            if not _startup_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: %s; retrying in %.1fs", what, str(exc) or type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def kept_bucket(js: JetStreamContext, name: str, settings: Settings) -> KeyValue:
    """A KV bucket of records kept as long as events are (one revision per key), created when
    missing; start-up retries as for the streams. The gateway's and notify's buckets."""

    async def open_or_create() -> KeyValue:
        try:
            return await js.key_value(name)
        except BucketNotFoundError:
            return await js.create_key_value(bucket=name, history=1, ttl=settings.events_max_age,
                                             replicas=settings.replicas)

    return await retrying(f"KV {name}", open_or_create)


def stream_config(spec: StreamSpec, settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=spec.stream_subjects(),
        retention=RetentionPolicy.WORK_QUEUE if spec.work_queue else RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.dedup_window,
        max_age=getattr(settings, spec.max_age) if spec.max_age else None,
        discard=DiscardPolicy.OLD,
    )


def consumer_config(durable: str, settings: Settings, concurrency: int,
                    filters: list[str] | None = None) -> ConsumerConfig:
    """Retries are paced by the runtime's `nak(delay)`; ack_wait only catches crashed workers
    (handlers heartbeat with in_progress while they run). max_ack_pending leaves room for
    several replicas at this concurrency. `filters`: a lane's subjects."""
    return ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=max(concurrency * 16, 256),
        num_replicas=settings.replicas,
        filter_subjects=filters,
    )


async def layout_exists(nc: NATS, timeout: float = 5.0) -> bool:
    """Whether every stream is there already. Asked with `$JS.API.STREAM.NAMES`, which the
    producer user may send (it may not create streams): people's commands skip `ensure_layout`
    when the stages have made the layout, instead of waiting on a creation they are refused."""
    reply = await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=timeout)
    names = msgspec.json.decode(reply.data).get("streams") or []
    return {spec.name for spec in STREAMS} <= set(names)


async def ensure_layout(js: JetStreamContext, settings: Settings, concurrency: int | None = None) -> None:
    """Create or update every stream and every stage consumer (retried while a fresh cluster
    elects its leaders, see `retrying`)."""
    for spec in STREAMS:
        config = stream_config(spec, settings)

        async def create_or_update(config: StreamConfig = config) -> None:
            try:
                await js.stream_info(config.name or "")
                await js.update_stream(config)
            except NotFoundError:
                await js.add_stream(config)

        await retrying(f"stream {spec.name}", create_or_update)
        for lane, name in spec.consumers():  # interactive first: it narrows a pre-lanes consumer in place
            consumer = consumer_config(name, settings, concurrency or settings.concurrency,
                                       spec.filters(lane) if spec.lanes else None)

            async def add_consumer(stream: str = spec.name, config: ConsumerConfig = consumer) -> None:
                await js.add_consumer(stream, config)

            await retrying(f"consumer {name}", add_consumer)


async def publish(js: JetStreamContext, subject: str, event: m.Event, timeout: float = 5.0) -> bool:
    """Publish with `Nats-Msg-Id` = event id; returns False when the server dropped a duplicate."""
    ack = await js.publish(subject, m.encode(event), timeout=timeout, headers={MSG_ID: event.id})
    return not ack.duplicate


async def read_stream(js: JetStreamContext, stream: str, subject: str = ">", limit: int = 100_000) -> list[m.AnyEvent]:
    """Everything a stream holds now (oldest first), read through a short-lived consumer: nothing
    is consumed, so it works on the limits streams (JM_EVENTS, JM_DLQ) without side effects.
    A clustered stream answers 503 for a while after a leader change; the read starts over then."""

    async def read_once() -> list[m.AnyEvent]:
        info = await js.stream_info(stream)
        if not info.state.messages:
            return []
        sub = await js.pull_subscribe(
            subject, stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0)
        )
        events: list[m.AnyEvent] = []
        try:
            while len(events) < limit:
                try:
                    batch = await sub.fetch(min(500, limit - len(events)), timeout=0.5)
                except TimeoutError:
                    break
                for msg in batch:
                    events.append(m.decode(msg.data))
                    await msg.ack()
        finally:
            await sub.unsubscribe()
        return events

    return await retrying(f"reading {stream}", read_once)
