"""A record per webhook attempt, in the `jetmedia-webhooks` KV bucket: what an operator (or a
support person asked "did you call us?") reads. Keys are `{job}.{delivery}.{attempt}`, so
`nats kv ls jetmedia-webhooks` sorts a job's attempts together; records live as long as events do."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.natsauth import WEBHOOKS_BUCKET

log = logging.getLogger("jetmedia.notify")
BUCKET = WEBHOOKS_BUCKET


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One (event, receiver) pair on JM_NOTIFY: what the `notify-deliver` consumer sends."""

    id: str  # `{event id}|{receiver}`: also its Nats-Msg-Id, so a redelivered event adds no copy
    event_id: str  # the webhook-id
    event_type: str
    job: str | None
    target: str  # `callback` or a subscription name (its secret is looked up when sending)
    url: str
    body: str  # the event as published on JM_EVENTS: the exact bytes that are signed and sent


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    delivery: str
    event_id: str
    event_type: str
    job: str | None
    target: str
    url: str  # without user:password@, query or fragment (they may carry a receiver's token)
    attempt: int  # the delivery of the JM_NOTIFY message (deferrals count, see `tried`)
    outcome: str  # delivered, retry, gone, refused, dead, deferred (not attempted: its receiver was busy)
    status: int | None = None
    seconds: float = 0.0
    error: str | None = None
    response: str = ""  # the first 1 KB of the answer
    at: datetime
    tried: int | None = None  # real attempts so far, this one included (None: records from before deferrals)


_decoder = msgspec.json.Decoder(Attempt)


def key(delivery: Delivery, attempt: int) -> str:
    job = delivery.job if delivery.job and m.is_job_id(delivery.job) else "_"
    return f"{job}.{hashlib.sha256(delivery.id.encode()).hexdigest()[:16]}.{attempt}"


class Records:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> Records:
        return cls(await bus.kept_bucket(js, BUCKET, settings))

    async def put(self, record: Attempt, delivery: Delivery) -> None:
        """Best effort: a KV hiccup must not turn a delivered webhook into a retried one."""
        try:
            await self.kv.put(key(delivery, record.attempt), msgspec.json.encode(record))
        except Exception as exc:
            log.warning("notify: could not record attempt %d of %s: %s", record.attempt, delivery.id, exc)

    async def tried_before(self, delivery: Delivery, attempt: int) -> int:
        """Real attempts before delivery number `attempt`, from the latest earlier record (a
        deferral spends a delivery, not an attempt). A delivery without a record (handed back at
        shutdown, a worker killed mid-attempt, KV down) counts as an attempt: a delivery may end
        sooner than its schedule says, never later."""
        for earlier in range(attempt - 1, max(attempt - 4, 0), -1):
            try:
                record = _decoder.decode((await self.kv.get(key(delivery, earlier))).value or b"")
            except KeyNotFoundError:
                continue
            except Exception:  # KV down or a record it cannot read: count every delivery
                break
            tried = record.tried if record.tried is not None else record.attempt
            return tried + (attempt - 1 - earlier)
        return attempt - 1

    async def of_job(self, js: JetStreamContext, job: str) -> list[Attempt]:
        """Every attempt recorded for a job, oldest first (tests, support). Read through a
        short-lived consumer that knows how many records match, not a KV watch (whose "that is
        all" marker could come before the records)."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=30.0)
        sub = await js.pull_subscribe(f"$KV.{BUCKET}.{job}.*.*", stream=f"KV_{BUCKET}", config=config)
        found = []
        try:
            left = (await sub.consumer_info()).num_pending or 0
            while left > 0:
                for msg in await sub.fetch(min(left, 256), timeout=5.0):
                    left -= 1
                    if msg.data:
                        found.append(_decoder.decode(msg.data))
        finally:
            await sub.unsubscribe()
        return sorted(found, key=lambda record: (record.at, record.attempt))
