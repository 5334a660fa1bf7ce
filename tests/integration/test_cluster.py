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
from tests.helpers import asset_event, eventually, running


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    nodes = start_cluster(tmp_path / "cluster")
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def test_pipeline_on_r3_cluster_survives_losing_the_stream_leader(
    cluster: list[NatsServer], stack: EmbeddedStack, settings: Settings
) -> None:
    clustered = settings.replace(nats_url=",".join(node.url for node in cluster), replicas=3)
    for attempt in range(50):  # the meta leader is elected within a second or so
        try:
            async with Services.open(clustered, name="cluster-test") as services:
                break
        except Exception:
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)

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


async def _publish_retrying(services: Services, event: m.AssetUploaded) -> None:
    for attempt in range(60):
        try:
            await bus.publish(services.js, m.UPLOAD_ASSET, event, timeout=2)
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
