"""Stopping a worker under load: every message it was delivered is finished or handed back at once.

A message the server delivered to a stopping worker but that the worker neither ran nor naked
stays "ack pending" until ack_wait runs out (30 s in production) before anyone else may have it.
nats-py's pull requests outlive the `fetch()` call that made them (a message can land in the
subscription after fetch returned), so the run loop must hand back whatever arrives after it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from shared import bus
from shared import messages as m
from shared.runtime import Context, Emit, Services, Stage, Worker
from tests.helpers import eventually


def quick_stage(handled: list[str]) -> Stage:
    async def handle(event: m.VariantRequested, ctx: Context) -> list[Emit]:
        await asyncio.sleep(random.uniform(0, 0.02))
        handled.append(event.id)
        return []

    return Stage(name="variant", stream="JM_VARIANT", handle=handle, accepts=(m.VariantRequested,),
                 cancellable=False, concurrency=8)


def request(n: int) -> m.VariantRequested:
    return m.VariantRequested(id=f"stop-{n}", subject=f"stop-{n}", time=m.now(),
                              data=m.VariantRequestedData(job=f"stop-{n}", asset=f"stop-{n}", bucket="b", key="k"))


async def test_stopping_under_load_leaves_nothing_delivered_and_unanswered(services: Services) -> None:
    settings = services.settings.replace(ack_wait=30.0)  # a stranded message would sit for 30 s
    await bus.ensure_layout(services.js, settings)
    handled: list[str] = []
    sent = 0

    async def publisher(stop: asyncio.Event) -> None:
        nonlocal sent
        while not stop.is_set():
            await bus.publish(services.js, m.VARIANT, request(sent))
            sent += 1
            await asyncio.sleep(random.uniform(0, 0.004))

    rng = random.Random(7)
    stranded: list[tuple[int, int]] = []
    for cycle in range(4):
        async with Services.open(settings, name=f"stop-{cycle}", layout=False) as own:
            stop_publishing = asyncio.Event()
            feeding = asyncio.create_task(publisher(stop_publishing))
            stopping = asyncio.Event()
            worker = Worker(quick_stage(handled), own)
            running = asyncio.create_task(worker.run(stopping))
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            stopping.set()
            await asyncio.wait_for(running, 30)
            stop_publishing.set()
            await feeding
        left = await take_what_is_deliverable(services)
        handled += left
        info = await services.js.consumer_info("JM_VARIANT", "variant")
        if info.num_ack_pending:
            stranded.append((cycle, info.num_ack_pending))
    assert sent > 100 and handled
    assert stranded == [], f"(cycle, messages delivered but neither finished nor handed back): {stranded}"


async def take_what_is_deliverable(services: Services, within: float = 2.0) -> list[str]:
    """What the next replica gets within a few seconds (acked): a message stranded at the stopped
    worker is not among it, it waits for ack_wait."""
    sub = await services.js.pull_subscribe_bind(durable="variant", stream="JM_VARIANT")
    taken: list[str] = []
    try:
        deadline = asyncio.get_running_loop().time() + within
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            with contextlib.suppress(TimeoutError):
                for msg in await sub.fetch(100, timeout=left):
                    taken.append(m.decode(msg.data).id)
                    await msg.ack()
    finally:
        await sub.unsubscribe()
    return taken


async def test_a_message_landing_after_the_loop_stopped_is_handed_back_at_once(services: Services) -> None:
    """Deterministic form of the race: a pull request of the worker's that is still open on the
    server when its loop stops (nats-py's fetch can time out just before the server's request
    expires) delivers one more message into the subscription while in-flight work drains."""
    settings = services.settings.replace(ack_wait=30.0)
    started = asyncio.Event()

    async def handle(event: m.VariantRequested, ctx: Context) -> list[Emit]:
        started.set()
        await asyncio.sleep(2.0)  # the drain: the subscription lives on meanwhile
        return []

    stage = Stage(name="variant", stream="JM_VARIANT", handle=handle, accepts=(m.VariantRequested,),
                  cancellable=False, concurrency=1)
    async with Services.open(settings, name="late") as own:
        worker = Worker(stage, own)
        stopping = asyncio.Event()
        running = asyncio.create_task(worker.run(stopping))
        await bus.publish(services.js, m.VARIANT, request(1))
        await asyncio.wait_for(started.wait(), 10)
        stopping.set()
        await eventually(lambda: _true(worker.shutting_down), timeout=5)
        inbox = worker.subscription._deliver  # where the worker's pull requests are answered
        await services.nc.publish("$JS.API.CONSUMER.MSG.NEXT.JM_VARIANT.variant",
                                  b'{"batch": 1, "expires": 5000000000}', reply=inbox)
        await services.nc.flush()
        await bus.publish(services.js, m.VARIANT, request(2))
        await asyncio.wait_for(running, 30)
    assert await take_what_is_deliverable(services) == [request(2).id]  # the next worker has it at once
    info = await services.js.consumer_info("JM_VARIANT", "variant")
    assert info.num_ack_pending == 0


async def _true(value: bool) -> bool:
    return value
