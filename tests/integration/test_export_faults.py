"""Exports under faults: a cancel mid-stream leaves nothing in S3; a finalize worker killed with
SIGKILL mid-stream is redone on redelivery and still yields exactly one correct archive."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import threading
import zipfile
from pathlib import Path

from services import stages
from shared import bus
from shared import messages as m
from shared.runtime import Services
from tests.helpers import download, eventually, export_event, final_job, running, worker_process, zip_tools_accept


async def put_blobs(services: Services, prefix: str, count: int, size: int) -> dict[str, bytes]:
    """Incompressible objects, so the archive streams at S3 speed (seconds, not milliseconds)."""
    sources = {f"{prefix}{i:03d}.bin": os.urandom(size) for i in range(count)}
    keys = list(sources)
    for start in range(0, count, 8):
        await asyncio.gather(*(services.storage.put_bytes(k, sources[k]) for k in keys[start:start + 8]))
    return sources


async def test_cancel_mid_export_leaves_no_object_and_no_open_upload(services: Services) -> None:
    await put_blobs(services, "cancel/", 40, 2 * 1024 * 1024)
    services.settings = services.settings.replace(export_part_bytes=24 * 1024 * 1024)  # ~4 parts
    prefix = "exports/exp-cancel/"
    async with running(services, [stages.load(n) for n in ("upload", "chunk", "finalize")]):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-cancel", prefix="cancel/"))

        async def mid_stream() -> bool:  # one part finished, the next one uploading
            return bool(await services.storage.list_keys(prefix)) and bool(
                await services.storage.open_multipart_uploads(prefix))

        await eventually(mid_stream, timeout=120, every=0.02)
        assert await services.cancel("exp-cancel")

        async def nothing_left() -> bool:
            return not await services.storage.list_keys(prefix) and not await services.storage.open_multipart_uploads(
                prefix)

        await eventually(nothing_left, timeout=30)
        await asyncio.sleep(1.0)  # and nothing comes back
        assert await nothing_left()

    job = await services.jobs.get("exp-cancel")
    assert job is not None and job.status == "cancelled" and job.url is None and job.exports == []


async def test_kill_9_mid_finalize_still_ends_in_exactly_one_correct_archive(
    services: Services, tmp_path: Path
) -> None:
    sources = await put_blobs(services, "kill/", 48, 2 * 1024 * 1024)
    prefix = "exports/exp-kill/"
    proc = worker_process(services.settings, "finalize")
    try:
        assert proc.stdout is not None
        while b"worker ready" not in (line := await asyncio.to_thread(proc.stdout.readline)):
            assert line, "worker exited before it was ready"
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained

        async with running(services, [stages.load(n) for n in ("upload", "chunk")]):
            await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-kill", prefix="kill/"))
            await eventually(lambda: services.storage.open_multipart_uploads(prefix), timeout=120, every=0.02)
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            assert await services.storage.open_multipart_uploads(prefix)  # killed mid-stream
            job = await services.jobs.get("exp-kill")
            assert job is not None and job.status == "running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    async with running(services, [stages.load("finalize")]):  # a replica picks up the redelivery
        job = await eventually(lambda: final_job(services, "exp-kill"), timeout=120)
    assert job.status == "ready", job.errors
    assert await services.storage.list_keys(prefix) == [prefix + "export-exp-kill.zip"]
    assert await services.storage.open_multipart_uploads(prefix) == []

    path = tmp_path / "kill.zip"
    assert job.url is not None
    await asyncio.to_thread(download, job.url, str(path))
    zip_tools_accept(str(path))
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert len(manifest["files"]) == len(sources)
        for entry in manifest["files"]:
            data = archive.read(entry["name"])
            assert data == sources[entry["key"]]
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
