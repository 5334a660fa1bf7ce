"""The cleanup sweep as the outbox's safety net, on real servers: a final event the runtime never
got out is published by a later sweep, once; an expired export whose `job.expired` the events
stream refused keeps its archive until a later sweep has announced it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest

from services import cleanup
from shared import messages as m
from shared.exportplan import chunk_key
from shared.jobs import Job, scan_records
from shared.runtime import Services
from tests.faults.test_answers import events_of, events_refused
from tests.helpers import stream_events


async def test_a_final_job_never_announced_is_announced_by_one_sweep_once(services: Services) -> None:
    """The events stream was down through every delivery of the job's last message: the record is
    final, its event is not in `announced`, and no message of the job will ever come again."""
    long_ago = m.now() - cleanup.ANNOUNCE_GRACE - timedelta(seconds=5)
    for job in (
        Job(id="s-lost", kind="asset", status="failed", stage="variant", created=long_ago, updated=long_ago),
        Job(id="s-fresh", kind="asset", status="cancelled", created=m.now(), updated=m.now()),  # the runtime's turn
        Job(id="s-told", kind="asset", status="failed", created=long_ago, updated=long_ago, announced=["failed"]),
        Job(id="s-busy", kind="asset", status="running", created=long_ago, updated=long_ago),
        Job(id="s-exp", kind="export", status="running", stage="chunk", chunks=1, created=long_ago, updated=long_ago),
    ):
        await services.jobs.create(job)
    await services.jobs.put_raw(chunk_key("s-exp", 0), b'{"not": "a job"}')  # skipped, never decoded as one

    first = await cleanup.sweep(services)
    [event] = await stream_events(services, "JM_EVENTS")
    assert isinstance(event, m.JobFailed) and event.subject == "s-lost" and event.id == "s-lost:failed"
    lost = await services.jobs.get("s-lost")
    assert lost is not None and lost.announced == ["failed"]
    assert first.announced == 1

    second = await cleanup.sweep(services)
    assert len(await stream_events(services, "JM_EVENTS")) == 1
    assert second.announced == 0
    fresh = await services.jobs.get("s-fresh")
    assert fresh is not None and fresh.announced == []


async def test_a_late_announcement_does_not_mark_a_rerun_that_started_meanwhile(services: Services) -> None:
    """The sweep read attempt 1 `failed`; a producer's request started attempt 2 before the mark.
    Attempt 1's event goes out; attempt 2's record must not claim `failed` is announced, or its own
    failure would never be."""
    long_ago = m.now() - cleanup.ANNOUNCE_GRACE - timedelta(seconds=5)
    seen, _ = await services.jobs.create(Job(id="s-again", kind="asset", status="failed", created=long_ago,
                                             updated=long_ago))
    await services.jobs.update("s-again", lambda job: msgspec.structs.replace(job, status="running", attempt=2))
    assert await cleanup._announce(services, seen) == 1
    assert await events_of(services, "s-again") == ["JobFailed"]
    rerun = await services.jobs.get("s-again")
    assert rerun is not None and rerun.attempt == 2 and rerun.announced == []


async def test_an_expired_export_refused_by_the_events_stream_is_announced_by_a_later_sweep(
        services: Services) -> None:
    expires = m.now() + timedelta(hours=1)
    archive = "exports/s-gone/s-gone.zip"
    await services.storage.put_bytes(archive, b"PK\x05\x06" + b"\x00" * 18)
    await services.jobs.create(Job(id="s-gone", kind="export", status="ready", stage="finalize", created=m.now(),
                                   updated=m.now(), url="https://example/s-gone.zip", expires=expires,
                                   announced=["ready"]))
    async with events_refused(services):
        refused = await cleanup.sweep(services, now=expires + timedelta(seconds=1))
    assert (refused.expired, refused.announced, refused.deleted) == (1, 0, 0)
    job = await services.jobs.get("s-gone")
    assert job is not None and job.status == "expired" and job.announced == ["ready"]
    assert await services.storage.list_keys("exports/s-gone/") == [archive]  # kept: the sweep comes back

    later = await cleanup.sweep(services)  # real time: no grace to wait out, the archive brings it back
    assert (later.expired, later.announced, later.deleted) == (0, 1, 1)
    assert await services.storage.list_keys("exports/s-gone/") == []
    assert (await cleanup.sweep(services, now=expires + timedelta(days=2))).announced == 0
    assert await events_of(services, "s-gone") == ["JobExpired"]
    job = await services.jobs.get("s-gone")
    assert job is not None and job.announced == ["ready", "expired"]


async def test_the_outbox_pass_reads_only_what_was_written_since_it_last_settled(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records are kept for good: a sweep every minute must not read every job ever run. A record
    in its grace period or refused by the events stream is read again; a settled one is not."""
    long_ago = m.now() - cleanup.ANNOUNCE_GRACE - timedelta(seconds=5)
    for n in range(50):  # settled history: announced long ago
        await services.jobs.create(Job(id=f"o-old-{n}", kind="asset", status="ready", created=long_ago,
                                       updated=long_ago, announced=["ready"]))
    fresh, _ = await services.jobs.create(Job(id="o-fresh", kind="asset", status="failed", created=m.now(),
                                              updated=m.now()))
    read: list[tuple[int, int]] = []

    async def scan_spy(jobs: Any, start: int, end: int, each: Any) -> float | None:
        read.append((start, end))
        return await scan_records(jobs, start, end, each)

    monkeypatch.setattr(cleanup, "scan_records", scan_spy)
    known = cleanup.Known()
    assert (await cleanup.sweep(services, known=known)).announced == 0  # o-fresh: the runtime's turn still
    assert read == [(1, 52)] and known.since == 51  # o-fresh is held

    async with events_refused(services):
        later = fresh.updated + cleanup.ANNOUNCE_GRACE + timedelta(seconds=1)
        assert (await cleanup.sweep(services, now=later, known=known)).announced == 0
    assert read[-1] == (51, 52) and known.since == 51  # refused: held again

    await services.jobs.create(Job(id="o-new", kind="asset", status="cancelled", created=long_ago, updated=long_ago))
    assert (await cleanup.sweep(services, now=later, known=known)).announced == 2
    assert read[-1] == (51, 53) and known.since == 53
    assert await events_of(services, "o-fresh") == ["JobFailed"]
    assert await events_of(services, "o-new") == ["JobCancelled"]
    assert (await cleanup.sweep(services, now=later, known=known)).announced == 0
    assert read[-1] == (53, 55) and known.since == 55  # the two marks, read once
    assert (await cleanup.sweep(services, now=later, known=known)).announced == 0
    assert len(read) == 4  # nothing written since: nothing read


async def test_a_ready_exports_transform_outputs_go_and_its_archive_stays(services: Services) -> None:
    """The archive holds copies of the transforms' outputs once the export is ready; a running
    export's outputs, and assets' own outputs, stay."""
    ready = ["exports/t-ready/items/1/0-0/mp3.mp3", "exports/t-ready/items/1/0-1/mp3.mp3"]
    kept = ["exports/t-ready/t-ready.zip", "exports/t-run/items/1/0-0/display.webp",
            "transcodes/src-x/mp4.mp4"]  # an asset may be called anything
    for key in (*ready, *kept):
        await services.storage.put_bytes(key, b"output")
    await services.jobs.create(Job(id="t-ready", kind="export", status="ready", stage="finalize", created=m.now(),
                                   updated=m.now(), expires=m.now() + timedelta(hours=12), announced=["ready"]))
    await services.jobs.create(Job(id="t-run", kind="export", status="running", stage="chunk", created=m.now(),
                                   updated=m.now()))
    assert (await cleanup.sweep(services)).deleted == 2
    assert sorted(await services.storage.list_keys("")) == sorted(kept)
    assert (await cleanup.sweep(services)).deleted == 0


async def test_a_read_of_the_bucket_that_stalls_goes_on_from_where_it_stopped(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """`scan_records` gives up after 5 s without a message (a leader change, say): the records
    it did not reach are read by the next sweep, not skipped for good."""
    long_ago = m.now() - cleanup.ANNOUNCE_GRACE - timedelta(seconds=5)
    for n in range(6):
        await services.jobs.create(Job(id=f"st-{n}", kind="asset", status="failed", created=long_ago,
                                       updated=long_ago, announced=[] if n == 5 else ["failed"]))
    read: list[tuple[int, int]] = []

    async def stalls_after_three(jobs: Any, start: int, end: int, each: Any) -> float | None:
        read.append((start, end))
        return await scan_records(jobs, start, min(end, start + 3), each)

    monkeypatch.setattr(cleanup, "scan_records", stalls_after_three)
    known = cleanup.Known()
    assert (await cleanup.sweep(services, known=known)).announced == 0 and known.since == 4
    assert (await cleanup.sweep(services, known=known)).announced == 1  # st-5, at sequence 6
    assert read == [(1, 7), (4, 7)]
    assert await events_of(services, "st-5") == ["JobFailed"]


async def test_a_sweep_of_an_empty_bucket_reads_nothing_and_fails_nothing(services: Services,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A fresh install: the jobs bucket's stream has no messages (its first sequence is 0, which
    no consumer may start from: NATS error 10094 failed every sweep until the first job)."""
    known = cleanup.Known()
    assert await cleanup.sweep(services, known=known) == cleanup.Swept()
    await services.jobs.create(Job(id="e-1", kind="asset", status="ready", created=m.now(), updated=m.now(),
                                   announced=["ready"]))
    assert await cleanup.sweep(services, known=known) == cleanup.Swept()
    assert known.since == 2 and not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
