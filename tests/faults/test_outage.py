"""Dependency outages: S3 refusing connections mid-batch costs time, never a job.

The stages talk to S3 through a TCP proxy that the test switches off (nothing listens: connection
refused, and open connections are cut) and on again. Without the breaker (shared/breaker.py) the
retry budget is spent on the outage and a good part of the batch is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from prometheus_client import REGISTRY

from services import samples, stages
from shared import breaker, bus
from shared import messages as m
from shared.config import Settings
from shared.devstack import NatsServer, free_port
from shared.jobs import new_job
from shared.runtime import Context, Emit, Services, Stage
from tests.helpers import asset_event, eventually, running, stream_events

JOBS = 216
OUTAGE = float(os.environ.get("JETMEDIA_TEST_S3_OUTAGE", "90"))  # seconds S3 refuses connections


class Proxy:
    """A loopback TCP proxy to `target` that can refuse connections for a while."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        # below the ephemeral range: while it refuses, a client's connect to a port in that range
        # can be given the same port as its own source and connect to itself (TCP self-connect),
        # which a probe reads as "S3 answers again" (seen once the fast S3 path tripled the connects)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.streams: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening (new connections are refused) and cut every open connection."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.streams):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.streams |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()  # one side ended: end the other

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self.streams -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def stop(self) -> None:
        if self.server is not None:
            await self.refuse()


@contextlib.asynccontextmanager
async def proxied(target: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(target)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def s3_up() -> float | None:
    return REGISTRY.get_sample_value("jetmedia_dependency_up", {"dependency": breaker.S3})


async def ready_count(services: Services, ids: list[str]) -> int:
    count = 0
    for job_id in ids:
        job = await services.jobs.get(job_id)
        count += job is not None and job.status == "ready"
    return count


async def test_s3_refusing_connections_mid_batch_loses_no_job(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jetmedia.breaker")  # said in the failure message
    assert services.settings.s3_endpoint
    photo = samples.photo(96, 64)
    ids = [f"out-{i}" for i in range(JOBS)]
    await asyncio.gather(*(services.storage.put_bytes(f"uploads/{i}.jpg", photo) for i in ids))
    async with proxied(services.settings.s3_endpoint) as proxy:
        staged = services.settings.replace(s3_endpoint=proxy.url, variant_presets="thumb:webp:48")
        async with Services.open(staged, name="outage") as stage_services, \
                running(stage_services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
            before, during = ids[:JOBS // 2], ids[JOBS // 2:]
            for job_id in before:
                await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(f"uploads/{job_id}.jpg", event_id=job_id))
            await eventually(lambda: _at_least(ready_count(services, before), 20), timeout=60)

            await proxy.refuse()
            # the rest arrives during the outage: however fast the stages got, S3 is needed while it lasts
            for job_id in during:
                await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(f"uploads/{job_id}.jpg", event_id=job_id))
            at_refuse = await ready_count(services, ids)
            lowest = 1.0
            refused_until = time.monotonic() + OUTAGE
            while time.monotonic() < refused_until:
                lowest = min(lowest, s3_up() or 0.0)
                await asyncio.sleep(0.2)
            ready_in_outage = await ready_count(services, ids)
            await proxy.start()

            await eventually(lambda: _at_least(ready_count(services, ids), JOBS), timeout=180, every=0.5)
            await eventually(lambda: _equals(s3_up(), 1.0), timeout=10)

    assert ready_in_outage < JOBS, "the batch finished before the outage: the test proves nothing"
    assert lowest == 0.0, f"the S3 breaker never reported the outage ({at_refuse} ready at its start, " \
                          f"{ready_in_outage} at its end, of {JOBS}); the breaker said: " \
                          f"{[r.getMessage() for r in caplog.records if r.name == 'jetmedia.breaker'][:8]}"
    assert await stream_events(services, "JM_DLQ") == []
    ready = [e for e in await stream_events(services, "JM_EVENTS") if isinstance(e, m.AssetReady)]
    assert sorted(e.data.job for e in ready) == sorted(ids)


async def _at_least(count: Coroutine[Any, Any, int], n: int) -> bool:
    return await count >= n


async def _equals(value: float | None, expected: float) -> bool:
    return value == expected


async def test_a_connection_error_while_s3_answers_takes_the_normal_retries(services: Services) -> None:
    """The breaker re-runs a handler only after a probe confirmed the outage: an input that makes
    its handler raise a connection error while S3 is fine (a bad endpoint in the input, a
    handler's own bug) is not retried forever, it spends its deliveries and is dead-lettered."""
    deliveries: list[int] = []

    async def handle(event: m.VariantRequested, ctx: Context) -> list[Emit]:
        deliveries.append(ctx.delivery)
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/elsewhere")

    stage = Stage(name="variant", stream="JM_VARIANT", handle=handle, accepts=(m.VariantRequested,))
    await services.jobs.create(new_job("not-an-outage", "asset", status="running"))
    request = m.VariantRequested(id="noo-1", subject="not-an-outage", time=m.now(),
                                 data=m.VariantRequestedData(job="not-an-outage", asset="a", bucket="b", key="k"))
    async with running(services, [stage]):
        await bus.publish(services.js, m.VARIANT, request)
        letters = await eventually(lambda: stream_events(services, "JM_DLQ"), timeout=40)
    assert deliveries == [1, 2, 3, 4, 5]
    assert len(letters) == 1 and s3_up() == 1.0


def nats_up() -> float | None:
    return REGISTRY.get_sample_value("jetmedia_dependency_up", {"dependency": breaker.NATS})


async def test_nats_restart_mid_batch_pauses_and_resumes(settings: Settings, tmp_path: Path) -> None:
    """NATS itself goes away for a while (a restart, on its own data directory): handlers that fail
    on it wait for the NATS breaker instead of spending deliveries; every job ends ready."""
    server = await asyncio.to_thread(NatsServer(tmp_path / "nats", port=free_port()).start)
    try:
        own = settings.replace(nats_url=server.url, variant_presets="thumb:webp:48")
        photo = samples.photo(96, 64)
        ids = [f"nr-{i}" for i in range(100)]
        async with Services.open(own, name="nats-restart") as services:
            await services.storage.ensure_bucket()
            await asyncio.gather(*(services.storage.put_bytes(f"uploads/{i}.jpg", photo) for i in ids))
            async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
                for job_id in ids:
                    await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(f"uploads/{job_id}.jpg",
                                                                              event_id=job_id))
                await eventually(lambda: _at_least(ready_count(services, ids[:3]), 1), timeout=60)
                ready_before = await ready_count(services, ids)
                await asyncio.to_thread(server.stop)
                lowest = 1.0
                until = time.monotonic() + 8
                while time.monotonic() < until:
                    lowest = min(lowest, nats_up() or 0.0)
                    await asyncio.sleep(0.2)
                await asyncio.to_thread(server.start)
                await eventually(lambda: _ready_or_none(services, ids), timeout=120, every=0.5)
                await eventually(lambda: _equals(nats_up(), 1.0), timeout=20)
            assert await stream_events(services, "JM_DLQ") == []
        assert lowest == 0.0, "the NATS breaker never reported the outage"
        assert ready_before < len(ids), "the batch finished before the outage: the test proves nothing"
    finally:
        await asyncio.to_thread(server.stop)


async def _ready_or_none(services: Services, ids: list[str]) -> bool:
    try:
        return await ready_count(services, ids) == len(ids)
    except Exception:  # still reconnecting
        return False
