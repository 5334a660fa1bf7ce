"""The runtime's job records come from a per-process cache kept current by a KV watch
(shared/recordcache.py): a change made anywhere reaches the next message, and a re-run's
message reads the bucket itself when the cached record is an attempt behind.
"""

from __future__ import annotations

import msgspec

from shared import bus
from shared import messages as m
from shared.jobs import decode_job, new_job
from shared.runtime import Context, Emit, Services, Stage
from tests.helpers import eventually, running


def request(job: str, n: int) -> m.VariantRequested:
    return m.VariantRequested(id=f"{job}:variant:{n}", subject=job, time=m.now(),
                              data=m.VariantRequestedData(job=job, asset=job, bucket="b", key="k"))


async def watched_status(services: Services, job: str, status: str) -> bool:
    entry = services.records._entries.get(job)
    return entry is not None and entry[1] is not None and decode_job(entry[1]).status == status


async def idle(services: Services) -> bool:
    info = await services.js.consumer_info("JM_VARIANT", "variant")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_change_elsewhere_reaches_the_next_message_and_a_rerun_reads_the_bucket(services: Services) -> None:
    seen: list[tuple[str, int]] = []

    async def record(event: m.VariantRequested, ctx: Context) -> list[Emit]:
        seen.append((event.id, ctx.attempt))
        return []

    stage = Stage(name="variant", stream="JM_VARIANT", handle=record, accepts=(m.VariantRequested,))
    await services.jobs.create(new_job("cached", "asset", status="running"))
    async with running(services, [stage]):
        await bus.publish(services.js, m.VARIANT, request("cached", 1))
        await eventually(lambda: idle(services))
        assert services.records._entries.get("cached") is not None  # read once, now cached

        # another process moves the job to attempt 2 (a re-run); its messages carry `#2`
        await services.jobs.update("cached", lambda job: msgspec.structs.replace(job, attempt=2))
        event = request("cached", 2)
        await services.js.publish(m.VARIANT, m.encode(event), headers={bus.MSG_ID: f"{event.id}#2"})
        await eventually(lambda: idle(services))

        # another process fails the job: the next message of it is skipped, not handled
        await services.jobs.fail("cached", "elsewhere", "broken")
        await eventually(lambda: watched_status(services, "cached", "failed"))  # the watch is asynchronous
        await bus.publish(services.js, m.VARIANT, request("cached", 3))
        await eventually(lambda: idle(services))
    assert seen == [("cached:variant:1", 1), ("cached:variant:2", 2)]
