"""The same pipeline on a 3-node JetStream cluster with R3 streams, surviving a node loss."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import samples, stages
from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.devstack import EmbeddedStack, NatsServer, start_cluster
from shared.runtime import Services
from tests.helpers import asset_event, eventually, export_event, final_job, running, stream_events


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    nodes = start_cluster(tmp_path / "cluster")
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()



async def layout_ready(settings: Settings) -> None:
    """Open (and so create the layout) once the cluster answers: the meta leader is elected
    within a second or so."""
    for attempt in range(50):
        try:
            async with Services.open(settings, name="cluster-test"):
                return
        except Exception:
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)


async def test_pipeline_on_r3_cluster_survives_losing_the_stream_leader(
    cluster: list[NatsServer], stack: EmbeddedStack, settings: Settings
) -> None:
    clustered = settings.replace(nats_url=",".join(node.url for node in cluster), replicas=3)
    await layout_ready(clustered)

    async with Services.open(clustered, name="cluster-test") as services:
        info = await services.js.stream_info("JM_UPLOAD")
        assert info.config.num_replicas == 3
        await services.storage.ensure_bucket()
        photo = samples.photo(800, 600)
        for i in range(6):
            await services.storage.put_bytes(f"uploads/c{i}.jpg", photo)

        async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
            for i in range(3):
                await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(f"uploads/c{i}.jpg", event_id=f"c{i}"))
            await eventually(lambda: _all_ready(services, ["c0", "c1", "c2"]), timeout=60)

            leader = (await services.js.stream_info("JM_UPLOAD")).cluster.leader  # type: ignore[union-attr]
            victim = next(node for node in cluster if node.name == leader)
            victim.stop()
            for i in range(3, 6):
                await _publish_retrying(services, asset_event(f"uploads/c{i}.jpg", event_id=f"c{i}"))
            await eventually(lambda: _all_ready(services, [f"c{i}" for i in range(6)]), timeout=90)


async def _publish_retrying(services: Services, event: m.Event, subject: str = m.UPLOAD_ASSET) -> None:
    for attempt in range(60):
        try:
            await bus.publish(services.js, subject, event, timeout=2)
            return
        except Exception:
            if attempt == 59:
                raise
            await asyncio.sleep(0.25)


async def _all_ready(services: Services, ids: list[str]) -> bool:
    for job_id in ids:
        try:
            job = await services.jobs.get(job_id)
        except Exception:
            return False
        if job is None or job.status != "ready":
            return False
    return True


async def test_stream_leaders_killed_during_a_batch_every_job_gets_exactly_one_final_event(
    cluster: list[NatsServer], stack: EmbeddedStack, settings: Settings
) -> None:
    """Issue 10: SIGKILL the node leading JM_EVENTS, then (after it is back) the one leading
    JM_FINALIZE, while a batch of assets, exports and failing jobs runs: every job ends with
    exactly one final event (asset.ready, export.ready or job.failed), none lost, none twice."""
    clustered = settings.replace(nats_url=",".join(node.url for node in cluster), replicas=3,
                                 retry_backoff=(1.0, 2.0, 4.0, 8.0))  # production-like: outlasts an election
    await layout_ready(clustered)

    async with Services.open(clustered, name="cluster-test") as services:
        await services.storage.ensure_bucket()
        await services.storage.put_bytes("uploads/k.jpg", samples.photo(640, 480))
        for i in range(4):
            await services.storage.put_bytes(f"kexp/{i}.txt", b"text %d\n" % i)
        assets = [f"ka{i}" for i in range(10)]
        exports = ["kx0", "kx1", "kx2", "kx3"]
        failing = ["kf0", "kf1"]
        async with running(services, [stages.load(n) for n in ("upload", "variant", "chunk", "finalize")]):
            # the node leading JM_EVENTS (and nothing else) dies before the first jobs finish: their
            # ready/failed publishes time out until a new leader is elected (seconds, after a SIGKILL)
            events_leader = await _leader(services, "JM_EVENTS")
            await _lead_elsewhere(services, events_leader)
            victim = await _kill_leader(services, cluster, "JM_EVENTS")
            for job in [*exports, *failing]:
                await _publish_retrying(services, (export_event(job, prefix="kexp/") if job in exports
                                                   else asset_event("uploads/none.jpg", event_id=job)),
                                        m.UPLOAD_EXPORT if job in exports else m.UPLOAD_ASSET)
            await eventually(lambda: _all_final(services, [*exports, *failing]), timeout=60)
            victim.start()  # same port and data: it rejoins and catches up
            for job in assets:
                await _publish_retrying(services, asset_event("uploads/k.jpg", event_id=job))
            await asyncio.sleep(0.3)
            victim = await _kill_leader(services, cluster, "JM_FINALIZE")
            await asyncio.sleep(3.0)
            victim.start()
            jobs = [*assets, *exports, *failing]
            await eventually(lambda: _all_final(services, jobs), timeout=120)
            await eventually(lambda: _events_for(services, jobs), timeout=60)
            await asyncio.sleep(1.0)  # and no second one follows

        events = await _final_events(services)
    assert {job: events.get(job) for job in assets} == {job: ["AssetReady"] for job in assets}
    assert {job: events.get(job) for job in exports} == {job: ["ExportReady"] for job in exports}
    assert {job: events.get(job) for job in failing} == {job: ["JobFailed"] for job in failing}


async def _leader(services: Services, stream: str, consumer: str | None = None) -> str | None:
    for attempt in range(100):
        try:
            if consumer is None:
                return (await services.js.stream_info(stream)).cluster.leader  # type: ignore[union-attr]
            return (await services.js.consumer_info(stream, consumer)).cluster.leader  # type: ignore[union-attr]
        except Exception:
            if attempt == 99:
                raise
            await asyncio.sleep(0.1)
    return None


async def _lead_elsewhere(services: Services, node: str | None) -> None:
    """Move the leadership of every other stream, the jobs KV and every stage consumer off `node`,
    so killing it takes away the events stream's leader and nothing else."""
    groups: list[tuple[str, str | None]] = [(s.name, None) for s in bus.STREAMS if s.name != "JM_EVENTS"]
    groups += [("KV_jetmedia-jobs", None)] + [(s.name, s.durable) for s in bus.STREAMS if s.durable]
    for stream, consumer in groups:
        for _ in range(20):
            if await _leader(services, stream, consumer) != node:
                break
            api = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}" if consumer else \
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
            await services.nc.request(api, b"", timeout=5)
            await asyncio.sleep(0.3)
        else:
            raise AssertionError(f"{stream} {consumer or ''} stays led by {node}")


async def _kill_leader(services: Services, cluster: list[NatsServer], stream: str) -> NatsServer:
    for attempt in range(100):
        try:
            leader = (await services.js.stream_info(stream)).cluster.leader  # type: ignore[union-attr]
            victim = next(node for node in cluster if node.name == leader)
            break
        except Exception:
            if attempt == 99:
                raise
            await asyncio.sleep(0.1)
    assert victim.proc is not None
    victim.proc.kill()  # SIGKILL: no leadership hand-off
    victim.proc.wait(10)
    return victim


async def _final_events(services: Services) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event in await stream_events(services, "JM_EVENTS"):
        if event.subject is not None:
            found.setdefault(event.subject, []).append(type(event).__name__)
    return found


async def _all_final(services: Services, ids: list[str]) -> bool:
    for job_id in ids:
        try:
            if await final_job(services, job_id) is None:
                return False
        except Exception:
            return False
    return True


async def _events_for(services: Services, ids: list[str]) -> bool:
    try:
        events = await _final_events(services)
    except Exception:
        return False
    return all(job in events for job in ids)
