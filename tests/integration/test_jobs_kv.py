"""Concurrent stages change one job record at once: compare-and-set loses no update. Listing the
newest jobs reads the bucket's tail, and says what a read of the whole bucket says. Records stay
for good unless JETMEDIA_JOB_MAX_AGE says otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest

from shared import jobs as jobs_module
from shared.config import Settings
from shared.jobs import Job, JobStore, new_job, recent_jobs
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


async def test_the_newest_jobs_come_from_the_tail_and_agree_with_the_whole_bucket(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "TAIL", 3)  # many passes over a small bucket
    monkeypatch.setattr(jobs_module, "CLOCK_SLACK", 0.0)  # one machine, one clock
    ids = [f"recent-{n:02d}" for n in range(30)]
    for n, job_id in enumerate(ids):
        await services.jobs.create(new_job(job_id, "export" if n % 3 == 0 else "asset", status="running"))
    for job_id in ids[2:20:4]:  # older jobs written again: their records move to the tail
        await services.jobs.update(job_id, lambda job: msgspec.structs.replace(job, status="failed"))
    await services.jobs.kv.put(f"{ids[5]}.chunk.0", b"{}")  # an export's side record is no job
    await services.jobs.kv.delete(ids[7])
    late = ("recent-late-a", "recent-late-b", "recent-late-c")
    for job_id in late:  # written last, with time between
        await asyncio.sleep(0.3)
        await services.jobs.create(new_job(job_id, "asset", status="queued"))

    everything = sorted([job for key in (*ids, *late) if (job := await services.jobs.get(key))],  # one by one
                        key=lambda job: job.created, reverse=True)
    assert len(everything) == 32 and ids[7] not in {job.id for job in everything}
    filters: dict[str, Callable[[Job], bool]] = {
        "all": lambda job: True, "failed": lambda job: job.status == "failed",
        "export": lambda job: job.kind == "export", "none": lambda job: False,
    }
    for limit in (1, 2, 5, 40):
        for name, keep in filters.items():
            got = await recent_jobs(services.jobs, limit, keep)
            assert got == [job for job in everything if keep(job)][:limit], (name, limit)

    starts: list[int] = []
    read_back = jobs_module.scan_records

    async def counted(*args: object) -> float | None:
        starts.append(args[1])  # type: ignore[arg-type]
        return await read_back(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs_module, "scan_records", counted)
    first = (await services.jobs.kv.status()).stream_info.state.first_seq
    assert [job.id for job in await recent_jobs(services.jobs, 2)] == ["recent-late-c", "recent-late-b"]
    assert await recent_jobs(services.jobs, 0) == []  # raised IndexError
    assert starts and min(starts) > first  # the newest two, without reading the whole bucket


async def test_job_records_are_kept_for_good_unless_a_worker_sets_a_max_age(services: Services) -> None:
    """JETMEDIA_JOB_MAX_AGE: the server removes records unchanged for that long. A worker's start
    applies it (either way); a person's command, whose environment may lack it, leaves it."""
    async def max_age() -> float:
        return (await services.jobs.kv.status()).stream_info.config.max_age or 0.0

    assert await max_age() == 0.0
    await services.jobs.create(new_job("aged", "asset"))
    month = 30 * 86400.0
    async with Services.open(services.settings.replace(job_max_age=month), name="worker"):
        assert await max_age() == month
    await JobStore.open(services.js, 1)  # `jetmedia status` and the like
    assert await max_age() == month
    async with Services.open(services.settings, name="worker"):
        assert await max_age() == 0.0
    assert await services.jobs.get("aged") is not None
    with pytest.raises(ValueError, match=r"JETMEDIA_JOB_MAX_AGE is 3600 s: 0 keeps job records for good"):
        Settings.from_env({"JETMEDIA_JOB_MAX_AGE": "3600"})
