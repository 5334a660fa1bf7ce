"""Priority lanes (README "Priority lanes") on a real nats-server: routing by subject, a
producer's `priority`, emits inheriting their message's lane, interactive work first without
starving bulk, and the upgrade from the single-consumer layout losing nothing.
"""

from __future__ import annotations

import asyncio

from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from shared import bus
from shared import messages as m
from shared.runtime import Context, Emit, Services, Stage
from tests.helpers import asset_event, eventually, export_event, running


def request(job: str) -> m.VariantRequested:
    return m.VariantRequested(id=m.derived_id(job, "variant"), subject=job, time=m.now(),
                              data=m.VariantRequestedData(job=job, asset=job, bucket="b", key="k"))


async def pending(services: Services, stream: str, consumer: str) -> int:
    info = await services.js.consumer_info(stream, consumer)
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


async def test_each_lane_has_its_consumer_and_subjects_route_to_it(services: Services) -> None:
    config = (await services.js.consumer_info("JM_VARIANT", "variant-bulk")).config
    assert config.filter_subjects == ["jetmedia.variant.bulk"]
    config = (await services.js.consumer_info("JM_VARIANT", "variant")).config
    assert config.filter_subjects == ["jetmedia.variant", "jetmedia.variant.interactive"]
    await bus.publish(services.js, "jetmedia.variant.bulk", request("b1"))
    await bus.publish(services.js, "jetmedia.variant", request("i1"))
    await bus.publish(services.js, "jetmedia.variant.interactive", request("i2"))
    assert await pending(services, "JM_VARIANT", "variant-bulk") == 1
    assert await pending(services, "JM_VARIANT", "variant") == 2
    upload = (await services.js.stream_info("JM_UPLOAD")).config.subjects
    assert upload == ["jetmedia.upload.*", "jetmedia.upload.*.interactive", "jetmedia.upload.*.bulk"]


async def test_producer_priority_decides_the_lane_and_emits_inherit_it(services: Services) -> None:
    """A stand-in upload stage passes each request on to variant: the lane it lands in comes
    from `priority`, else an explicit subject lane, else the kind (asset interactive, export bulk)."""
    seen: dict[str, str] = {}

    async def forward(event: m.AssetUploaded | m.ExportRequested, ctx: Context) -> list[Emit]:
        seen[event.id] = ctx.lane
        return [Emit(m.VARIANT, request(event.id))]

    stage = Stage(name="upload", stream="JM_UPLOAD", handle=forward, accepts=(m.AssetUploaded, m.ExportRequested),
                  cancellable=False)
    sent = {
        "asset-default": (m.UPLOAD_ASSET, asset_event("a.jpg", "asset-default")),
        "asset-bulk": (m.UPLOAD_ASSET, asset_event("a.jpg", "asset-bulk", priority="bulk")),
        "asset-bulk-subject": (m.UPLOAD_ASSET + ".bulk", asset_event("a.jpg", "asset-bulk-subject")),
        "asset-field-wins": (m.UPLOAD_ASSET + ".bulk", asset_event("a.jpg", "asset-field-wins",
                                                                    priority="interactive")),
        "export-default": (m.UPLOAD_EXPORT, export_event("export-default", keys=["a"])),
        "export-interactive": (m.UPLOAD_EXPORT, export_event("export-interactive", keys=["a"],
                                                              priority="interactive")),
    }
    for subject, event in sent.values():
        await bus.publish(services.js, subject, event)
    async with running(services, [stage]):
        await eventually(lambda: _true(len(seen) == len(sent)))
    assert seen == {"asset-default": "interactive", "asset-bulk": "bulk", "asset-bulk-subject": "bulk",
                    "asset-field-wins": "interactive", "export-default": "bulk", "export-interactive": "interactive"}
    stored = await stored_subjects(services, "JM_VARIANT")
    assert stored == {m.derived_id(job, "variant"): "jetmedia.variant" + (".bulk" if lane == "bulk" else "")
                      for job, lane in seen.items()}


async def stored_subjects(services: Services, stream: str) -> dict[str, str]:
    """event id -> subject of what a work-queue stream holds (read by sequence: a work-queue
    stream takes no consumer that overlaps its stage's)."""
    state = (await services.js.stream_info(stream)).state
    out = {}
    for seq in range(state.first_seq, state.last_seq + 1):
        raw = await services.js.get_msg(stream, seq)
        out[m.decode(raw.data or b"").id] = raw.subject or ""
    return out


async def test_lanes_off_keeps_everything_on_the_bare_subject(services: Services) -> None:
    off = Services(services.settings.replace(lanes=False), services.nc, services.js, services.jobs, services.storage)
    try:
        assert off.subject_for(Emit(m.VARIANT, request("x")), "bulk") == m.VARIANT
        assert services.subject_for(Emit(m.VARIANT, request("x")), "bulk") == "jetmedia.variant.bulk"
        assert services.subject_for(Emit(m.EVENTS_ASSET_READY, request("x")), "bulk") == m.EVENTS_ASSET_READY
        assert services.subject_for(Emit(m.VARIANT, request("x"), lane="interactive"), "bulk") == m.VARIANT
    finally:
        await off.close()


async def test_interactive_goes_first_and_bulk_keeps_its_share(services: Services) -> None:
    """40 bulk and 40 interactive messages wait before a one-slot worker starts: every interactive
    message runs before the bulk backlog is done, and yet every 4th start (JETMEDIA_BULK_SHARE
    0.25) goes to bulk while both lanes have work."""
    order: list[str] = []

    async def record(event: m.VariantRequested, ctx: Context) -> list[Emit]:
        order.append(ctx.lane)
        return []

    stage = Stage(name="variant", stream="JM_VARIANT", handle=record, accepts=(m.VariantRequested,),
                  cancellable=False, concurrency=1)
    for n in range(40):
        await bus.publish(services.js, "jetmedia.variant.bulk", request(f"bulk-{n}"))
    for n in range(40):
        await bus.publish(services.js, m.VARIANT, request(f"photo-{n}"))
    async with running(services, [stage]):
        await eventually(lambda: _true(len(order) == 80), timeout=60)
    last_interactive = max(n for n, lane in enumerate(order) if lane == "interactive")
    assert last_interactive < 56, order  # 40 interactive + their 1-in-4 bulk share (~14), not the whole backlog
    share = order[:last_interactive + 1].count("bulk") / (last_interactive + 1)
    assert 0.2 <= share <= 0.3, order
    assert all(order[n:n + 4].count("bulk") >= 1 for n in range(0, last_interactive - 3)), order  # never starved


async def test_upgrade_from_the_single_consumer_layout_strands_nothing(services: Services) -> None:
    """The pre-lanes layout: JM_VARIANT on `jetmedia.variant`, one unfiltered consumer `variant`
    with work waiting and some of it in an old worker's hands. The new layout narrows that
    consumer in place and adds `variant-bulk`; the old worker's acks still count, the rest runs."""
    js = services.js
    await js.delete_stream("JM_VARIANT")
    await js.add_stream(StreamConfig(name="JM_VARIANT", subjects=[m.VARIANT], retention=RetentionPolicy.WORK_QUEUE,
                                     storage=StorageType.FILE))
    await js.add_consumer("JM_VARIANT", ConsumerConfig(durable_name="variant", ack_policy=AckPolicy.EXPLICIT,
                                                       ack_wait=30.0))
    for n in range(10):
        await bus.publish(js, m.VARIANT, request(f"old-{n}"))
    old_worker = await js.pull_subscribe_bind(durable="variant", stream="JM_VARIANT")
    in_hand = await old_worker.fetch(3, timeout=5)

    await bus.ensure_layout(js, services.settings)
    await bus.ensure_layout(js, services.settings)  # every process does it at start-up: idempotent
    assert (await js.consumer_info("JM_VARIANT", "variant")).num_ack_pending == 3
    for msg in in_hand:  # the old worker finishes its work after the upgrade
        await msg.ack()
    await bus.publish(js, "jetmedia.variant.bulk", request("new-bulk"))

    handled: list[str] = []

    async def record(event: m.VariantRequested, ctx: Context) -> list[Emit]:
        handled.append(event.data.job)
        return []

    stage = Stage(name="variant", stream="JM_VARIANT", handle=record, accepts=(m.VariantRequested,),
                  cancellable=False)
    async with running(services, [stage]):
        await eventually(lambda: _true(len(handled) == 8), timeout=30)
        await eventually(lambda: _stream_empty(services, "JM_VARIANT"), timeout=30)
    assert sorted(handled) == sorted([f"old-{n}" for n in range(3, 10)] + ["new-bulk"])


async def _stream_empty(services: Services, stream: str) -> bool:
    return (await services.js.stream_info(stream)).state.messages == 0


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value
