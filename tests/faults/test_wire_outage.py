"""An export in flight when its dependencies go away: S3 refusing connections while finalize
streams the archive, and nats-server restarting while chunks and finalize run. Each export ends
ready with one whole archive (every member's bytes as uploaded), no dead letter, none stuck."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import zipfile
from pathlib import Path

from services import stages
from shared import bus
from shared.config import Settings
from shared.devstack import NatsServer, free_port
from shared.jobs import Job
from shared.runtime import Services
from tests.faults.test_outage import proxied
from tests.helpers import eventually, export_event, final_job, running, stream_events

FILES = 24
SIZE = 1 << 20


async def sources(services: Services, prefix: str) -> dict[str, str]:
    """FILES incompressible objects under `prefix`; name in the archive -> sha256."""
    blobs = {f"{prefix}/f{i:02d}.bin": os.urandom(SIZE) for i in range(FILES)}
    await asyncio.gather(*(services.storage.put_bytes(key, body) for key, body in blobs.items()))
    return {key.rsplit("/", 1)[1]: hashlib.sha256(body).hexdigest() for key, body in blobs.items()}


async def archive_members(services: Services, job: Job) -> dict[str, str]:
    assert job.archive
    [key] = [k for k in await services.storage.list_keys(f"exports/{job.id}/") if k.endswith(".zip")]
    with zipfile.ZipFile(io.BytesIO(await services.storage.get_bytes(key))) as archive:
        return {info.filename: hashlib.sha256(archive.read(info)).hexdigest() for info in archive.infolist()
                if info.filename not in ("README.txt", "manifest.json")}


async def in_stage(services: Services, job_id: str, stage: str) -> bool:
    job = await services.jobs.get(job_id)
    return job is not None and (job.stage == stage or job.final)


async def test_s3_refusing_connections_while_finalize_streams(services: Services) -> None:
    wanted = await sources(services, "s3out")
    assert services.settings.s3_endpoint
    async with proxied(services.settings.s3_endpoint) as proxy:
        staged = services.settings.replace(s3_endpoint=proxy.url)
        async with Services.open(staged, name="export-outage") as stage_services, \
                running(stage_services, [stages.load(n) for n in ("upload", "chunk", "finalize")]):
            await bus.publish(services.js, "jetmedia.upload.export", export_event("xo-1", prefix="s3out/"))
            await eventually(lambda: in_stage(services, "xo-1", "finalize"), timeout=60, every=0.01)
            await proxy.refuse()
            during = await services.jobs.get("xo-1")
            await asyncio.sleep(4)
            await proxy.start()
            job = await eventually(lambda: final_job(services, "xo-1"), timeout=120, every=0.2)
    assert during is not None and not during.final, "the archive was done before the outage: the test proves nothing"
    assert job.status == "ready", job.errors
    assert await stream_events(services, "JM_DLQ") == []
    assert await archive_members(services, job) == wanted


async def test_nats_restart_while_an_export_runs(settings: Settings, tmp_path: Path) -> None:
    server = await asyncio.to_thread(NatsServer(tmp_path / "nats", port=free_port()).start)
    try:
        own = settings.replace(nats_url=server.url, export_chunk_files=2)
        async with Services.open(own, name="export-nats-restart") as services:
            await services.storage.ensure_bucket()
            wanted = await sources(services, "natsout")
            async with running(services, [stages.load(n) for n in ("upload", "chunk", "finalize")]):
                await bus.publish(services.js, "jetmedia.upload.export", export_event("xn-1", prefix="natsout/"))
                await eventually(lambda: in_stage(services, "xn-1", "chunk"), timeout=60, every=0.01)
                during = await services.jobs.get("xn-1")
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(4)
                await asyncio.to_thread(server.start)

                async def ended() -> Job | None:
                    try:
                        return await final_job(services, "xn-1")
                    except Exception:  # still reconnecting
                        return None

                job = await eventually(ended, timeout=120, every=0.5)
            assert during is not None and not during.final, "done before the restart: the test proves nothing"
            assert job.status == "ready", job.errors
            assert await stream_events(services, "JM_DLQ") == []
            assert await archive_members(services, job) == wanted
    finally:
        await asyncio.to_thread(server.stop)
