"""Connection, streams and consumers: the JetStream layout, declared once.

One stream per stage keeps each stage's queue depth visible and its limits its own.
`ensure_layout` is create-or-update, so every service calls it at start-up and the layout
converges whichever process starts first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

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
from nats.js.errors import NotFoundError

from . import messages as m
from .config import Settings

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


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("JM_UPLOAD", ("jetmedia.upload.>",), True, "upload"),
    StreamSpec("JM_CHUNK", (m.CHUNK,), True, "chunk"),
    StreamSpec("JM_VARIANT", (m.VARIANT,), True, "variant"),
    StreamSpec("JM_TRANSCODE", (m.TRANSCODE,), True, "transcode"),
    StreamSpec("JM_FINALIZE", ("jetmedia.finalize.>",), True, "finalize"),
    StreamSpec("JM_EVENTS", ("jetmedia.events.>",), False, None, "events_max_age"),
    StreamSpec("JM_DLQ", (m.DLQ_PREFIX + ".>",), False, None, "dlq_max_age"),
)
STREAM_BY_NAME = {spec.name: spec for spec in STREAMS}
MSG_ID = "Nats-Msg-Id"


async def connect(settings: Settings, name: str = "jetmedia", *, wait: float = STARTUP_WAIT) -> NATS:
    """Connect with whatever credentials the settings carry; once connected, reconnect forever.

    The first connection is tried for about `wait` seconds (a server or cluster still starting),
    then fails with the last error: a process never hangs on a NATS that is not there."""
    retry_every = 0.5
    options: dict[str, object] = {
        "servers": settings.nats_url.split(","),
        "name": name,
        "max_reconnect_attempts": max(1, math.ceil(wait / retry_every)),
        "reconnect_time_wait": retry_every,
        "connect_timeout": 5,
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

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def on_disconnect() -> None:
        if not (client.is_closed or client.is_draining):
            log.warning("nats: disconnected")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    client = NATS()
    await client.connect(
        error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, **options  # type: ignore[arg-type]
    )
    client.options["max_reconnect_attempts"] = -1  # nats-py reads it at each reconnect
    return client


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


def stream_config(spec: StreamSpec, settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.WORK_QUEUE if spec.work_queue else RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.dedup_window,
        max_age=getattr(settings, spec.max_age) if spec.max_age else None,
        discard=DiscardPolicy.OLD,
    )


def consumer_config(durable: str, settings: Settings, concurrency: int) -> ConsumerConfig:
    """Retries are paced by the runtime's `nak(delay)`; ack_wait only catches crashed workers
    (handlers heartbeat with in_progress while they run). max_ack_pending leaves room for
    several replicas at this concurrency."""
    return ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=max(concurrency * 16, 256),
        num_replicas=settings.replicas,
    )


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
        if spec.durable:
            consumer = consumer_config(spec.durable, settings, concurrency or settings.concurrency)

            async def add_consumer(stream: str = spec.name, config: ConsumerConfig = consumer) -> None:
                await js.add_consumer(stream, config)

            await retrying(f"consumer {spec.durable}", add_consumer)


async def publish(js: JetStreamContext, subject: str, event: m.Event, timeout: float = 5.0) -> bool:
    """Publish with `Nats-Msg-Id` = event id; returns False when the server dropped a duplicate."""
    ack = await js.publish(subject, m.encode(event), timeout=timeout, headers={MSG_ID: event.id})
    return not ack.duplicate


async def read_stream(js: JetStreamContext, stream: str, subject: str = ">", limit: int = 100_000) -> list[m.AnyEvent]:
    """Everything a stream holds now (oldest first), read through a short-lived consumer: nothing
    is consumed, so it works on the limits streams (JM_EVENTS, JM_DLQ) without side effects."""
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
