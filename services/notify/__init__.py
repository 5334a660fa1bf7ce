"""notify: POSTs each final event of a job to its `callback_url` and to matching subscriptions,
signed per Standard Webhooks, retried through JetStream (README "Webhooks").

Two durable consumers, both shared by every replica:

- `notify` on JM_EVENTS (final subjects only) fans out: one `Delivery` per (event, receiver) on
  JM_NOTIFY, message id `{event id}|{receiver}`, then acks. A crash between publishes redelivers
  the event; the duplicate window drops the copies already out.
- `notify-deliver` on JM_NOTIFY sends them, one attempt per delivery of the message: 2xx acks,
  410 acks (that receiver said stop), anything else naks with the next delay of
  JETMEDIA_WEBHOOK_RETRY_SCHEDULE; after the last attempt, or when the URL is refused (unsafe,
  no secret), a dead letter in JM_DLQ (stage `notify`) and `term`. Each receiver's deliveries
  retry on their own, and at most PER_RECEIVER attempts run at once to one receiver (the rest
  wait, heartbeated, neither busy nor spending an attempt), so a slow or dead receiver holds up
  only its own messages. Past HELD x PER_RECEIVER of one receiver's messages in hand, more are
  deferred (nak with a delay, no attempt): otherwise a backlog for one dead receiver fills every
  WAITING place and nothing else is fetched. The attempt count of a message is therefore not its
  delivery count but what its records say (Records.tried_before).

Not a runtime `Stage`: the runtime skips messages of jobs that already ended, and every event
notify handles is one; and its failures would fail the job, while a receiver that is down says
nothing about the media. The stream and consumers are created here at start-up, so notify needs
nothing from shared/bus.py's layout but JM_EVENTS. A worker killed mid-attempt leaves the message
unacked: it is sent again after JETMEDIA_WEBHOOK_TIMEOUT + JETMEDIA_ACK_WAIT with the same
`webhook-id` (at least once; receivers dedupe on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import nats.errors
import yarl
from nats.aio.msg import Msg
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

from shared import bus, metrics
from shared import messages as m
from shared.config import ConfigError, Settings
from shared.messages import url_shown as shown
from shared.runtime import DLQ_ENVELOPE, MAX_ERROR_TEXT, Services, delivery_count

from . import safety, send, signing, targets
from .records import Attempt, Delivery, Records

log = logging.getLogger("jetmedia.notify")

STAGE = "notify"  # the dead letters' stage; also the events consumer's name
STREAM = "JM_NOTIFY"
SUBJECT = "jetmedia.notify.deliver"
EVENTS_CONSUMER = "notify"
DELIVER_CONSUMER = "notify-deliver"
CONCURRENCY = 16  # attempts in flight per process (they wait on receivers); JETMEDIA_STAGE_CONCURRENCY=notify=N
PER_RECEIVER = 4  # of them to one receiver (host:port) at most: a slow one cannot take every slot
WAITING = 8  # messages held per slot while their receiver is at its limit (heartbeated, not attempted)
HELD = 4  # x PER_RECEIVER: messages of one receiver held at once; more are deferred (Notifier.deliver)
DEFERRALS = 24  # deliveries a message may spend deferred, besides its attempts
_delivery_decoder = msgspec.json.Decoder(Delivery)


def attempts(settings: Settings) -> int:
    """Attempts per delivery: the first, then one after each delay of the schedule."""
    return len(settings.webhook_retry_schedule) + 1


def max_deliveries(settings: Settings) -> int:
    """The consumer's max_deliver: every attempt, the deferrals, and one more for a worker killed
    during the last attempt."""
    return attempts(settings) + DEFERRALS + 1


async def ensure_layout(js: JetStreamContext, settings: Settings) -> None:
    """JM_NOTIFY and both durable consumers, created or updated (idempotent, any replica)."""
    stream = StreamConfig(
        name=STREAM, subjects=[SUBJECT], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        num_replicas=settings.replicas, duplicate_window=settings.dedup_window, discard=DiscardPolicy.OLD,
    )

    async def create_stream() -> None:
        try:
            await js.stream_info(STREAM)
            await js.update_stream(stream)
        except NotFoundError:
            await js.add_stream(stream)

    await bus.retrying(f"stream {STREAM}", create_stream)
    pending = max(settings.stage_concurrency.get(STAGE, CONCURRENCY) * WAITING * 2, 256)
    events = ConsumerConfig(
        durable_name=EVENTS_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=settings.ack_wait,
        max_deliver=-1, deliver_policy=DeliverPolicy.NEW, filter_subjects=list(targets.FINAL_SUBJECTS),
        max_ack_pending=pending, num_replicas=settings.replicas,
    )
    deliveries = ConsumerConfig(
        durable_name=DELIVER_CONSUMER, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.webhook_timeout + settings.ack_wait,
        max_deliver=max_deliveries(settings),
        max_ack_pending=pending, num_replicas=settings.replicas,
    )
    await bus.retrying(f"consumer {EVENTS_CONSUMER}", lambda: js.add_consumer("JM_EVENTS", events))
    await bus.retrying(f"consumer {DELIVER_CONSUMER}", lambda: js.add_consumer(STREAM, deliveries))


async def run(services: Services, stopping: asyncio.Event) -> None:
    """Both consumers until `stopping`. Settings that cannot work stop the process (exit 2)."""
    settings = services.settings
    try:
        targets.check(settings)
        allowed = safety.networks(settings.webhook_allow_networks)
    except ValueError as exc:
        log.error("notify: %s", exc)
        stopping.set()
        raise ConfigError(f"stage notify: {exc}") from None
    if not settings.webhook_secret:
        log.info("notify: JETMEDIA_WEBHOOK_SECRET is not set: jobs' callback_url deliveries are dead-lettered")
    await ensure_layout(services.js, settings)
    notifier = Notifier(services, await Records.open(services.js, settings), allowed)
    concurrency = settings.stage_concurrency.get(STAGE, CONCURRENCY)
    await asyncio.gather(
        consume(services, "JM_EVENTS", EVENTS_CONSUMER, notifier.fan_out, concurrency, stopping),
        consume(services, STREAM, DELIVER_CONSUMER, notifier.deliver, concurrency, stopping,
                busy=lambda: notifier.receivers.sending),
    )


async def consume(services: Services, stream: str, durable: str, handle: Callable[[Msg], Awaitable[None]],
                  concurrency: int, stopping: asyncio.Event, busy: Callable[[], int] | None = None) -> None:
    """A pull loop with at most `concurrency` handlers busy (`busy`: how many are; default every
    one in flight), and at most `WAITING` x that in flight; on stop, in-flight work gets the
    shutdown grace, then is handed back (nak)."""
    js = services.js
    sub = await bus.retrying(f"consumer {durable}", lambda: js.pull_subscribe_bind(durable=durable, stream=stream))
    inflight: set[asyncio.Task[None]] = set()
    log.info("notify: pulling from %s (%s, concurrency %d)", stream, durable, concurrency)
    try:
        while not stopping.is_set():
            free = min(concurrency - (busy() if busy is not None else len(inflight)),
                       concurrency * WAITING - len(inflight))
            if free <= 0:
                await asyncio.wait(inflight, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                batch = await sub.fetch(free, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:
                log.warning("notify: fetch from %s failed (%s); retrying", durable, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in batch:
                task = asyncio.create_task(_guarded(handle, msg, services.settings))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
    finally:
        if inflight:
            _done, late = await asyncio.wait(inflight, timeout=services.settings.shutdown_grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _guarded(handle: Callable[[Msg], Awaitable[None]], msg: Msg, settings: Settings) -> None:
    """A handler never leaves a message unanswered: what it did not expect (NATS or KV down)
    hands the message back with the runtime's backoff."""
    try:
        await handle(msg)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await msg.nak()
        raise
    except Exception as exc:
        delivery = delivery_count(msg)
        log.warning("notify: %s failed (%s: %s); handed back", msg.subject, type(exc).__name__, exc)
        with contextlib.suppress(Exception):
            await msg.nak(delay=settings.backoff_for(delivery))


class Notifier:
    def __init__(self, services: Services, records: Records, allowed: tuple[safety.Network, ...]) -> None:
        self.services = services
        self.settings = services.settings
        self.records = records
        self.allowed = allowed
        self.subscriptions = targets.subscriptions(self.settings)
        concurrency = self.settings.stage_concurrency.get(STAGE, CONCURRENCY)
        self.receivers = Receivers(max(1, min(PER_RECEIVER, concurrency // 2)), self.settings.ack_wait)

    async def fan_out(self, msg: Msg) -> None:
        """A final event becomes one Delivery per receiver (none: just acked)."""
        try:
            event = m.decode(msg.data)
        except Exception:  # the events stream's own business: nothing to notify
            await msg.ack()
            return
        if not isinstance(event, targets.FINAL_TYPES):
            await msg.ack()
            return
        job_id = event.subject
        job = await self.services.jobs.get(job_id) if job_id and m.is_job_id(job_id) else None
        body = msg.data.decode()
        kind = str(type(event).__struct_config__.tag)
        for target in targets.targets(event, msg.subject, job, self.subscriptions):
            delivery = Delivery(id=f"{event.id}|{target.name}", event_id=event.id, event_type=kind, job=job_id,
                                target=target.name, url=target.url, body=body)
            await self.services.js.publish(SUBJECT, msgspec.json.encode(delivery), timeout=5.0,
                                           headers={bus.MSG_ID: delivery.id})
        await msg.ack()

    async def deliver(self, msg: Msg) -> None:
        """One attempt of one delivery, recorded, then ack / nak(delay) / dead letter."""
        try:
            delivery = _delivery_decoder.decode(msg.data)
        except msgspec.MsgspecError as exc:
            log.error("notify: unreadable delivery on %s (%s); dropped", msg.subject, exc)
            await msg.term()
            return
        attempt = delivery_count(msg)
        tried = await self.records.tried_before(delivery, attempt)
        receiver = receiver_of(delivery.url)
        secret = targets.secret_for(delivery.target, self.settings, self.subscriptions)
        if secret is None:
            why = ("JETMEDIA_WEBHOOK_SECRET is not set" if delivery.target == targets.CALLBACK
                   else f"subscription {delivery.target!r} is no longer configured")
            answer = send.Answer(None, 0.0, f"refused: {why}: the delivery cannot be signed", refused=True)
        elif self.receivers.held(receiver) >= self.receivers.per * HELD and attempt < max_deliveries(self.settings) - 1:
            answer = send.Answer(None, 0.0, f"not attempted: {self.receivers.held(receiver)} deliveries to "
                                            f"{receiver} in hand already (slow or down)", deferred=True)
        else:
            tried += 1
            async with self.receivers.slot(receiver, msg):
                body = delivery.body.encode()
                answer = await send.post(
                    delivery.url, body, signing.headers(secret, delivery.event_id, body), allowed=self.allowed,
                    connect_timeout=self.settings.webhook_connect_timeout, timeout=self.settings.webhook_timeout,
                )
        final = tried >= attempts(self.settings) or attempt >= max_deliveries(self.settings) - 1
        outcome = _outcome(answer, final)
        metrics.webhook_deliveries_total.labels(outcome).inc()
        if not (answer.refused or answer.deferred):
            metrics.webhook_seconds.observe(answer.seconds)
        await self.records.put(Attempt(
            delivery=delivery.id, event_id=delivery.event_id, event_type=delivery.event_type, job=delivery.job,
            target=delivery.target, url=shown(delivery.url), attempt=attempt, outcome=outcome,
            status=answer.status, seconds=round(answer.seconds, 4), error=answer.error, response=answer.body,
            at=m.now(), tried=tried,
        ), delivery)
        log.info("notify: %s to %s (%s) attempt %d: %s%s", delivery.event_id, delivery.target,
                 shown(delivery.url), attempt, outcome, f" ({answer.error})" if answer.error else "")
        if outcome in ("delivered", "gone"):
            await msg.ack()
        elif outcome == "retry":
            await msg.nak(delay=retry_delay(answer, tried, self.settings.webhook_retry_schedule))
        elif outcome == "deferred":
            await msg.nak(delay=self._deferral(attempt - tried))
        else:
            await self._dead_letter(msg, delivery, attempt, tried, answer)
            await msg.term()

    def _deferral(self, deferrals: int) -> float:
        """Nth deferral's delay: an attempt's time, doubling, up to the schedule's longest delay
        (a receiver down for hours is asked about rarely, its messages spending few deliveries)."""
        longest = max((*self.settings.webhook_retry_schedule, self.settings.webhook_timeout))
        return min(self.settings.webhook_timeout * 2 ** min(deferrals - 1, 20), longest)

    async def _dead_letter(self, msg: Msg, delivery: Delivery, attempt: int, tried: int,
                           answer: send.Answer) -> None:
        """The letter names no job (`data.job` empty): replaying it re-sends the webhook and must
        not reopen the job (shared/dlq.py reopens the job of a stage's letter)."""
        meta = msg.metadata
        last = f"HTTP {answer.status}" if answer.status is not None else (answer.error or "no answer")
        if answer.refused:
            error = f"{answer.error}"
        else:
            error = f"gave up after {tried} attempts; last: {last}"
            if answer.error and answer.status is not None:
                error += f" ({answer.body[:200]!r})" if answer.body else ""
        error = (f"webhook {delivery.event_id} (job {delivery.job}) to {delivery.target} "
                 f"{shown(delivery.url)}: {error}")[:MAX_ERROR_TEXT]
        budget = max(self.services.nc.max_payload - DLQ_ENVELOPE, 1024)
        letter = m.DeadLetter(
            id=f"dlq:{meta.stream}:{meta.sequence.stream}", source=self.settings.source, time=m.now(),
            data=m.DeadLetterData(
                stage=STAGE, error_class="WebhookRefused" if answer.refused else "WebhookFailed", error=error,
                permanent=answer.refused, delivery_count=attempt, stream=meta.stream,
                stream_seq=meta.sequence.stream, original_subject=msg.subject,
                **m.stored_original(msg.data, budget),
            ),
        )
        await bus.publish(self.services.js, f"{m.DLQ_PREFIX}.{STAGE}", letter)


class Receivers:
    """At most `per` attempts at once to one receiver. A message over the limit waits here
    without counting as busy (the pull loop fetches more: other receivers' messages go ahead)
    and without spending an attempt; `in_progress` keeps it ours while it waits."""

    def __init__(self, per: int, heartbeat: float) -> None:
        self.per = per
        self.heartbeat = max(heartbeat / 2, 0.5)
        self.sending = 0
        self._limits: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}  # receiver -> (limit, [users])

    def held(self, receiver: str) -> int:
        """Messages of this receiver in hand: waiting for a slot or being sent."""
        found = self._limits.get(receiver)
        return found[1][0] if found is not None else 0

    @contextlib.asynccontextmanager
    async def slot(self, receiver: str, msg: Msg) -> AsyncIterator[None]:
        limit, users = self._limits.setdefault(receiver, (asyncio.Semaphore(self.per), [0]))
        users[0] += 1
        try:
            acquiring = asyncio.ensure_future(limit.acquire())
            try:
                while not (await asyncio.wait({acquiring}, timeout=self.heartbeat))[0]:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
            except asyncio.CancelledError:
                if acquiring.done() and not acquiring.cancelled():
                    limit.release()
                acquiring.cancel()
                raise
            self.sending += 1
            try:
                yield
            finally:
                self.sending -= 1
                limit.release()
        finally:
            users[0] -= 1
            if not users[0]:
                self._limits.pop(receiver, None)


def receiver_of(url: str) -> str:
    """host:port as the client connects to it (yarl: the default port filled in, the host as
    IDNA sends it), so `http://h/` and `http://H:80/x` share one limit (they were two)."""
    try:
        parsed = yarl.URL(url)
        return f"{parsed.raw_host}:{parsed.port}"
    except ValueError:
        return url


def retry_delay(answer: send.Answer, attempt: int, schedule: tuple[float, ...]) -> float:
    """The schedule's delay after `attempt`, or longer when the receiver asked for it (Retry-After
    of a 429 or 503: an attempt sooner is refused again and spends one of the few), but never
    longer than the schedule's longest delay: a receiver cannot park a delivery for a year."""
    delay = schedule[min(attempt, len(schedule)) - 1]
    if answer.retry_after is not None:
        delay = max(delay, min(answer.retry_after, max(schedule)))
    return delay


def _outcome(answer: send.Answer, final: bool) -> str:
    if answer.refused:
        return "refused"
    if answer.deferred:
        return "deferred"
    if answer.status is not None and 200 <= answer.status < 300:
        return "delivered"
    if answer.status == 410:
        return "gone"
    return "dead" if final else "retry"


async def send_sample(settings: Settings, url: str, secret: str) -> send.Answer:
    """`jetmedia webhooks test URL`: one signed sample event (an asset.ready of job `webhook-test`)."""
    event = m.AssetReady(
        id=f"webhook-test:{m.new_id()}", source=settings.source, time=m.now(), subject="webhook-test",
        data=m.AssetReadyData(job="webhook-test", asset="webhook-test", key="uploads/sample.jpg", media="image",
                              outputs=[m.OutputFile(preset="thumb", key="variants/webhook-test/thumb.webp",
                                                    format="webp", bytes=1234, width=400, height=300)]),
    )
    body = m.encode(event)
    return await send.post(url, body, signing.headers(secret, event.id, body),
                           allowed=safety.networks(settings.webhook_allow_networks),
                           connect_timeout=settings.webhook_connect_timeout, timeout=settings.webhook_timeout)
