"""The collector: queue depth per stage and JetStream usage, read from the server itself.

Replicas of a stage share one durable consumer per lane, so its pending / ack-pending / redelivered
counts are facts about the stage, not about any process. If every replica exported them, a
`sum` over four variant replicas would show four times the real queue. So exactly one process
reads them (the `collector` service in compose, the collector task inside `jetmedia up`) and
sets the gauges in shared/metrics.py; workers never touch them.

What is read, every `queue_poll_interval` seconds:
- consumer info of every stage's durable consumers (one per lane) -> jetmedia_queue_lane_{pending,
  ack_pending}{stage,lane}, and the lanes summed -> jetmedia_queue_{pending,ack_pending,
  redelivered,waiting}{stage};
- JM_DLQ's per-subject counts (`jetmedia.dlq.<stage>`) -> jetmedia_dlq_messages{stage}, 0 for a
  stage without dead letters, so "no dead letters" is a visible 0 rather than a gap;
- every stream's messages and bytes, and the account's storage/memory use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from . import bus, metrics
from . import messages as m

log = logging.getLogger("jetmedia.collector")

# (stage, stream) for every work-queue stream: the durable consumer is named after its stage.
STAGE_CONSUMERS: tuple[tuple[str, str], ...] = tuple(
    (spec.durable, spec.name) for spec in bus.STREAMS if spec.durable
)
# (stage, stream, lane, consumer): one consumer per lane (README "Priority lanes")
LANE_CONSUMERS: tuple[tuple[str, str, str, str], ...] = tuple(
    (spec.durable, spec.name, lane, consumer) for spec in bus.STREAMS if spec.durable
    for lane, consumer in spec.consumers()
)
DLQ_STREAM = "JM_DLQ"
# (stage, stream, consumer) of the webhook sender (services/notify, which keeps its own layout: the
# events it fans out and the deliveries it sends; a unit test keeps these equal to its names)
NOTIFY_CONSUMERS: tuple[tuple[str, str, str], ...] = (
    ("notify", "JM_EVENTS", "notify"), ("notify-deliver", "JM_NOTIFY", "notify-deliver"),
)
NOTIFY_STREAM = "JM_NOTIFY"


async def poll(js: JetStreamContext) -> None:
    """Read JetStream once and set every collector gauge. Missing streams/consumers (a fresh
    server before the first stage created the layout) are skipped, not reported as zero."""
    totals: dict[str, list[int]] = {}
    for stage, stream, lane, consumer in LANE_CONSUMERS:
        try:
            info = await js.consumer_info(stream, consumer)
        except NotFoundError:
            continue
        metrics.queue_lane_pending.labels(stage, lane).set(info.num_pending or 0)
        metrics.queue_lane_ack_pending.labels(stage, lane).set(info.num_ack_pending or 0)
        total = totals.setdefault(stage, [0, 0, 0, 0])
        for n, value in enumerate((info.num_pending, info.num_ack_pending, info.num_redelivered, info.num_waiting)):
            total[n] += value or 0
    for stage, stream, consumer in NOTIFY_CONSUMERS:  # webhooks waiting: only where notify runs
        try:
            info = await js.consumer_info(stream, consumer)
        except NotFoundError:
            continue
        totals[stage] = [info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0,
                         info.num_waiting or 0]
    for stage, (pending, ack_pending, redelivered, waiting) in totals.items():  # the stage's lanes together
        metrics.queue_pending.labels(stage).set(pending)
        metrics.queue_ack_pending.labels(stage).set(ack_pending)
        metrics.queue_redelivered.labels(stage).set(redelivered)
        metrics.queue_waiting.labels(stage).set(waiting)

    for name in (*(spec.name for spec in bus.STREAMS), NOTIFY_STREAM):
        try:
            state = (await js.stream_info(name)).state
        except NotFoundError:
            continue
        metrics.stream_messages.labels(name).set(state.messages)
        metrics.stream_bytes.labels(name).set(state.bytes)

    await _dead_letters(js)

    account = await js.account_info()
    metrics.jetstream_storage_bytes.set(account.storage)
    metrics.jetstream_memory_bytes.set(account.memory)


async def _dead_letters(js: JetStreamContext) -> None:
    try:
        info = await js.stream_info(DLQ_STREAM, subjects_filter=f"{m.DLQ_PREFIX}.>")
    except NotFoundError:
        return
    counts = {stage: 0 for stage, _stream in STAGE_CONSUMERS}
    for subject, count in (info.state.subjects or {}).items():
        stage = subject.removeprefix(f"{m.DLQ_PREFIX}.")
        counts[stage] = counts.get(stage, 0) + count
    for stage, count in counts.items():
        metrics.dlq_messages.labels(stage).set(count)


async def run(js: JetStreamContext, stopping: asyncio.Event, interval: float) -> None:
    """Poll until `stopping`; a failed poll is counted and logged, the next one tries again."""
    log.info("collector: reading queue depth every %.1fs", interval)
    for result in ("ok", "error"):
        metrics.collector_polls.labels(result)  # both series exist from the start: errors show as 0
    while not stopping.is_set():
        try:
            await poll(js)
        except Exception as exc:
            metrics.collector_polls.labels("error").inc()
            log.warning("collector: could not read JetStream (%s); retrying", exc)
        else:
            metrics.collector_polls.labels("ok").inc()
            metrics.collector_last_poll.set_to_current_time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
