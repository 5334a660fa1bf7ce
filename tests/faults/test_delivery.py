"""Delivery semantics on a real nats-server: heartbeats, retries, dead letters, duplicates.

Each test runs a small stage on the real JM_VARIANT stream (durable `variant`), whose handler
misbehaves in one specific way, and asserts on what the server, the DLQ and KV then hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Coroutine
from typing import Any

from shared import bus
from shared import messages as m
from shared.jobs import new_job
from shared.runtime import Context, Emit, Reject, Retry, Services, Stage
from tests.helpers import eventually, running, stream_events


def stage_with(behaviour: Callable[[m.VariantRequested, Context], Coroutine[Any, Any, None]]) -> Stage:
    async def handle(event: m.VariantRequested, ctx: Context) -> list[Emit]:
        await behaviour(event, ctx)
        return []

    return Stage(name="variant", stream="JM_VARIANT", handle=handle, accepts=(m.VariantRequested,))


def request(job: str, event_id: str | None = None) -> m.VariantRequested:
    return m.VariantRequested(
        id=event_id or m.derived_id(job, "variant"), subject=job, time=m.now(),
        data=m.VariantRequestedData(job=job, asset=job, bucket="b", key="k"),
    )


async def publish_job(services: Services, job: str, event_id: str | None = None) -> None:
    await services.jobs.create(new_job(job, "asset", status="running"))
    await bus.publish(services.js, m.VARIANT, request(job, event_id))


async def consumer_idle(services: Services) -> bool:
    info = await services.js.consumer_info("JM_VARIANT", "variant")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_handler_slower_than_ack_wait_is_not_redelivered(services: Services) -> None:
    deliveries: list[int] = []

    async def slow(event: m.VariantRequested, ctx: Context) -> None:
        deliveries.append(ctx.delivery)
        await asyncio.sleep(services.settings.ack_wait * 2.5)

    async with running(services, [stage_with(slow)]):
        await publish_job(services, "slow")
        await eventually(lambda: consumer_idle(services), timeout=30)
        await asyncio.sleep(services.settings.ack_wait * 1.5)  # time for a wrongful redelivery

    assert deliveries == [1]
    info = await services.js.consumer_info("JM_VARIANT", "variant")
    assert info.num_redelivered == 0


async def test_transient_failure_retries_with_growing_delays_then_succeeds(services: Services) -> None:
    seen: list[float] = []

    async def flaky(event: m.VariantRequested, ctx: Context) -> None:
        seen.append(time.monotonic())
        if ctx.delivery <= 3:
            raise Retry(f"S3 hiccup #{ctx.delivery}")

    async with running(services, [stage_with(flaky)]):
        await publish_job(services, "flaky")
        await eventually(lambda: consumer_idle(services), timeout=30)

    assert len(seen) == 4
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    backoff = services.settings.retry_backoff
    for gap, expected in zip(gaps, backoff, strict=False):
        assert gap >= expected * 0.9
    assert gaps[0] < gaps[1] < gaps[2]
    assert await stream_events(services, "JM_DLQ") == []


async def test_permanent_failure_is_dead_lettered_once_and_fails_the_job(services: Services) -> None:
    calls = 0

    async def broken(event: m.VariantRequested, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise Reject("image is 50000x50000 px, over the 100 MP limit")

    async with running(services, [stage_with(broken)]):
        await publish_job(services, "bomb")
        letters = await eventually(lambda: stream_events(services, "JM_DLQ"))
        await eventually(lambda: consumer_idle(services))

    assert calls == 1
    assert len(letters) == 1
    letter = letters[0]
    assert isinstance(letter, m.DeadLetter)
    assert letter.data.stage == "variant" and letter.data.permanent
    assert letter.data.error_class == "Reject" and "over the 100 MP limit" in letter.data.error
    original = m.decode(letter.data.original.encode())
    assert isinstance(original, m.VariantRequested)
    assert (original.id, original.data) == (request("bomb").id, request("bomb").data)
    job = await services.jobs.get("bomb")
    assert job is not None and job.status == "failed"
    assert job.errors[-1].stage == "variant" and "100 MP" in job.errors[-1].reason
    failed = [e for e in await stream_events(services, "JM_EVENTS") if isinstance(e, m.JobFailed)]
    assert [e.data.job for e in failed] == ["bomb"]


async def test_always_transient_failure_is_dead_lettered_after_max_deliver(services: Services) -> None:
    deliveries: list[int] = []

    async def down(event: m.VariantRequested, ctx: Context) -> None:
        deliveries.append(ctx.delivery)
        raise ConnectionError("S3 endpoint refused the connection")

    async with running(services, [stage_with(down)]):
        await publish_job(services, "down")
        letters = await eventually(lambda: stream_events(services, "JM_DLQ"), timeout=30)
        await eventually(lambda: consumer_idle(services))

    assert deliveries == [1, 2, 3, 4, 5]
    assert len(letters) == 1 and isinstance(letters[0], m.DeadLetter)
    assert letters[0].data.delivery_count == 5 and not letters[0].data.permanent
    assert "gave up after 5 deliveries" in letters[0].data.error
    job = await services.jobs.get("down")
    assert job is not None and job.status == "failed"


async def test_same_event_id_published_twice_is_processed_once(services: Services) -> None:
    handled: list[str] = []

    async def record(event: m.VariantRequested, ctx: Context) -> None:
        handled.append(event.id)

    await services.jobs.create(new_job("twice", "asset", status="running"))
    first = await bus.publish(services.js, m.VARIANT, request("twice", "evt-42"))
    second = await bus.publish(services.js, m.VARIANT, request("twice", "evt-42"))
    assert (first, second) == (True, False)  # the server dropped the copy
    async with running(services, [stage_with(record)]):
        await eventually(lambda: consumer_idle(services))
        await asyncio.sleep(0.3)
    assert handled == ["evt-42"]


async def test_malformed_messages_are_dead_lettered_and_the_stage_keeps_working(services: Services) -> None:
    handled: list[str] = []

    async def record(event: m.VariantRequested, ctx: Context) -> None:
        handled.append(event.data.job)

    bad = {
        "not-json": b"\x00\xffnot json at all",
        "unknown-type": b'{"type": "jetmedia.nope.v1", "id": "u1", "data": {}}',
        "missing-field": b'{"type": "jetmedia.variant.requested.v1", "id": "m1", "data": {"job": "x"}}',
    }
    async with running(services, [stage_with(record)]):
        for name, payload in bad.items():
            await services.js.publish(m.VARIANT, payload, headers={bus.MSG_ID: name})
        await publish_job(services, "good")
        letters = await eventually(
            lambda: _at_least(stream_events(services, "JM_DLQ"), len(bad)), timeout=20
        )
        await eventually(lambda: consumer_idle(services))

    assert handled == ["good"]
    reasons = sorted(letter.data.error for letter in letters if isinstance(letter, m.DeadLetter))
    assert len(reasons) == 3
    assert any("invalid event: not JSON" in r for r in reasons)
    assert any("type: unknown event type 'jetmedia.nope.v1'" in r for r in reasons)
    assert any("data.asset: required" in r for r in reasons)
    assert all(letter.data.permanent for letter in letters if isinstance(letter, m.DeadLetter))


async def test_cancelled_job_is_skipped_and_running_handler_stopped(services: Services) -> None:
    started = asyncio.Event()
    finished_cleanly: list[bool] = []

    async def long(event: m.VariantRequested, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            finished_cleanly.append(True)  # where a stage kills ffmpeg / aborts uploads
            raise

    async with running(services, [stage_with(long)]):
        await publish_job(services, "stop-me")
        await asyncio.wait_for(started.wait(), 10)
        assert await services.cancel("stop-me")
        await eventually(lambda: consumer_idle(services), timeout=10)

    assert finished_cleanly == [True]
    job = await services.jobs.get("stop-me")
    assert job is not None and job.status == "cancelled"
    assert await stream_events(services, "JM_DLQ") == []


async def _at_least(events: Coroutine[Any, Any, list[m.AnyEvent]], n: int) -> list[m.AnyEvent] | None:
    found = await events
    return found if len(found) >= n else None


async def test_worker_dying_on_every_delivery_is_dead_lettered_from_the_server_advisory(
    services: Services,
) -> None:
    """A poison message that crashes its worker each time never reaches our own error path; the
    server's MAX_DELIVERIES advisory does, and one replica turns it into a dead letter."""
    settings = services.settings.replace(max_deliver=2)
    async with Services.open(settings, name="advisory") as strict:
        from shared.runtime import Worker

        listener = Worker(stage_with(_never_called), strict)
        advisories = await listener._watch_max_deliveries()
        try:
            await publish_job(strict, "poison")
            zombie = await strict.js.pull_subscribe_bind(durable="variant", stream="JM_VARIANT")
            for _ in range(2):  # delivered, never acked: what a crashing worker looks like
                await zombie.fetch(1, timeout=settings.ack_wait * 3)
            with contextlib.suppress(TimeoutError):  # a replica still pulling: the server gives up now
                await zombie.fetch(1, timeout=settings.ack_wait * 2)
            letters = await eventually(lambda: stream_events(strict, "JM_DLQ"), timeout=20)
            await zombie.unsubscribe()
        finally:
            await advisories.unsubscribe()

    assert len(letters) == 1 and isinstance(letters[0], m.DeadLetter)
    assert letters[0].data.error_class == "MaxDeliveries" and letters[0].data.delivery_count == 2
    assert letters[0].data.job == "poison"
    job = await services.jobs.get("poison")
    assert job is not None and job.status == "failed" and "2 deliveries" in job.errors[-1].reason
    assert (await services.js.stream_info("JM_VARIANT")).state.messages == 0  # not left behind


async def _never_called(event: m.VariantRequested, ctx: Context) -> None:
    raise AssertionError("the listener must not handle messages")
