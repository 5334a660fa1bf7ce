"""Whole worker processes dying or being stopped: nothing is lost, nothing is done twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess

from services import samples
from shared import bus
from shared import messages as m
from shared.runtime import Services
from tests.helpers import asset_event, eventually, worker_process

JOBS = 10


async def publish_photos(services: Services, prefix: str) -> list[str]:
    photo = samples.photo(3000, 2000)
    ids = []
    for i in range(JOBS):
        key = f"uploads/{prefix}-{i}.jpg"
        await services.storage.put_bytes(key, photo)
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(key, event_id=f"{prefix}-{i}"))
        ids.append(f"{prefix}-{i}")
    return ids


async def statuses(services: Services, ids: list[str]) -> dict[str, str]:
    return {job_id: (job.status if (job := await services.jobs.get(job_id)) else "none") for job_id in ids}


async def first_ready(services: Services, ids: list[str]) -> bool:
    return "ready" in (await statuses(services, ids)).values()


async def all_final(services: Services, ids: list[str]) -> dict[str, str] | None:
    found = await statuses(services, ids)
    return found if all(s in ("ready", "failed") for s in found.values()) else None


async def unacked(services: Services) -> int:
    total = 0
    for stream, durable in (("JM_UPLOAD", "upload"), ("JM_VARIANT", "variant"), ("JM_FINALIZE", "finalize")):
        info = await services.js.consumer_info(stream, durable)
        total += info.num_ack_pending
    return total


async def assert_each_output_once(services: Services, ids: list[str]) -> None:
    keys = await services.storage.list_keys("variants/")
    recorded = []
    for job_id in ids:
        job = await services.jobs.get(job_id)
        assert job is not None
        recorded += [out.key for out in job.outputs]
    assert f"variants/{ids[0]}/thumb.webp" in recorded
    assert sorted(keys) == sorted(recorded)  # every output once, nothing stray
    ready = [e for e in await _events(services) if isinstance(e, m.AssetReady)]
    assert sorted(e.data.job for e in ready) == sorted(ids)  # one ready event per job


async def _events(services: Services) -> list[m.AnyEvent]:
    from tests.helpers import stream_events

    return await stream_events(services, "JM_EVENTS")


async def replica_finishes(services: Services, ids: list[str]) -> subprocess.Popen[bytes]:
    """Start another replica; every job ends ready with each output stored once."""
    replica = worker_process(services.settings)
    try:
        final = await eventually(lambda: all_final(services, ids), timeout=90)
        assert set(final.values()) == {"ready"}
        await assert_each_output_once(services, ids)
    except BaseException:
        stop(replica)
        raise
    return replica


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


async def test_sigkilled_worker_mid_job_another_replica_completes_it(services: Services) -> None:
    first = worker_process(services.settings, env={"JETMEDIA_CONCURRENCY": "1"})
    second = None
    try:
        ids = await publish_photos(services, "kill")
        await eventually(lambda: first_ready(services, ids), timeout=60)
        in_flight = await unacked(services)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert in_flight > 0, "the worker was killed with nothing in flight; the test proves nothing"

        second = await replica_finishes(services, ids)
        second.send_signal(signal.SIGTERM)
        log = second.stdout.read().decode() if second.stdout else ""
        assert "outcome=ok delivery=2" in log  # the killed worker's message came back to the replica
    finally:
        stop(first)
        if second:
            stop(second)


async def test_sigterm_finishes_in_flight_work_and_exits_cleanly(services: Services) -> None:
    first = worker_process(services.settings, env={"JETMEDIA_CONCURRENCY": "2"})
    second = None
    try:
        ids = await publish_photos(services, "term")
        await eventually(lambda: first_ready(services, ids), timeout=60)
        first.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, services.settings.shutdown_grace + 15)
        output = first.stdout.read().decode() if first.stdout else ""
        assert code == 0, output[-3000:]
        assert "stopped" in output

        second = await replica_finishes(services, ids)
    finally:
        stop(first)
        if second:
            stop(second)
