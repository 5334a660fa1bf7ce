"""Concurrent stages change one job record at once: compare-and-set loses no update."""

from __future__ import annotations

import asyncio

import msgspec

from shared.jobs import Job, new_job
from shared.runtime import Services


async def test_concurrent_updates_are_never_lost(services: Services) -> None:
    await services.jobs.create(new_job("busy", "export", total=60))

    def one_more(job: Job) -> Job:
        return msgspec.structs.replace(job, done=job.done + 1, bytes=job.bytes + 10)

    await asyncio.gather(*(services.jobs.update("busy", one_more) for _ in range(60)))
    job = await services.jobs.get("busy")
    assert job is not None and (job.done, job.bytes) == (60, 600)


async def test_create_is_idempotent_for_redeliveries(services: Services) -> None:
    first, created = await services.jobs.create(new_job("once", "asset", status="running"))
    again, created_again = await services.jobs.create(new_job("once", "asset"))
    assert created and not created_again
    assert again.status == "running" and again.created == first.created


async def test_errors_are_bounded(services: Services) -> None:
    await services.jobs.create(new_job("noisy", "asset"))
    for i in range(40):
        await services.jobs.fail("noisy", "variant", f"reason {i} " + "x" * 5000)
    job = await services.jobs.get("noisy")
    assert job is not None and len(job.errors) == 20
    assert job.errors[-1].reason.startswith("reason 39") and len(job.errors[-1].reason) <= 1000
    assert len(msgspec.json.encode(job)) < 64 * 1024
