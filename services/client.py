"""What a person (or a script) does with a running pipeline: submit, watch, cancel, inspect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.jobs import Job, JobStore
from shared.runtime import Services

console = Console(stderr=True)


def output_console() -> Console:
    """Tables on stdout; piped output (CI logs, scripts) gets full lines instead of 80 columns."""
    out = Console()
    if not out.is_terminal:
        out.width = 200
    return out


async def publish_asset(services: Services, key: str, *, event_id: str | None = None) -> str:
    """Start an asset job for an object already in S3; returns the job id."""
    event = m.AssetUploaded(
        id=event_id or m.new_id(), source="jetmedia-cli", time=m.now(),
        data=m.AssetUploadedData(key=key),
    )
    await bus.publish(services.js, m.UPLOAD_ASSET, event)
    job = m.job_of(event)
    assert job is not None
    return job


async def wait_for_jobs(
    jobs: JobStore, ids: Sequence[str], *, timeout: float = 600.0, label: str = "jobs", show: bool = True
) -> list[Job]:
    """Poll the KV records until every job is final, drawing one progress bar per job.

    Polling (not a KV watch) on purpose: a few gets per second cost nothing here, and it
    sidesteps nats-py's known watcher bugs (#584, #842, #898)."""
    deadline = time.monotonic() + timeout
    records: dict[str, Job | None] = dict.fromkeys(ids)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        console=console, disable=not show, transient=False,
    ) as progress:
        bars: dict[str, TaskID] = {
            job: progress.add_task(f"{label} {job[:24]}", total=1, status="queued") for job in ids
        }
        while time.monotonic() < deadline:
            for job_id in ids:
                record = await jobs.get(job_id)
                records[job_id] = record
                if record is not None:
                    total = max(record.total, 1)
                    progress.update(bars[job_id], total=total, completed=min(record.done, total),
                                    status=f"{record.status} ({record.stage})")
            if all(r is not None and r.final for r in records.values()):
                break
            await asyncio.sleep(0.2)
    return [r for r in records.values() if r is not None]


async def submit_files(settings: Settings, files: Sequence[Path], *, wait: bool) -> int:
    async with Services.open(settings, name="jetmedia-cli") as services:
        await services.storage.ensure_bucket()
        ids = []
        for path in files:
            key = f"uploads/{m.new_id()[:12]}/{path.name}"
            await services.storage.upload_file(key, str(path))
            ids.append(await publish_asset(services, key))
            print(f"{path}\tjob {ids[-1]}\ts3://{settings.bucket}/{key}")
        if not wait:
            return 0
        done = await wait_for_jobs(services.jobs, ids)
        print_jobs(done)
        return 0 if all(job.status == "ready" for job in done) else 1


def print_jobs(jobs: Sequence[Job]) -> None:
    table = Table(title="jobs")
    for column in ("job", "kind", "media", "status", "outputs", "errors"):
        table.add_column(column)
    for job in jobs:
        outputs = "\n".join(f"{o.key} ({o.width}x{o.height}, {o.bytes} B)" if o.width else f"{o.key} ({o.bytes} B)"
                            for o in job.outputs) or (job.url or "")
        errors = "\n".join(f"{e.stage}: {e.reason}" for e in job.errors[-3:])
        table.add_row(job.id, job.kind, job.media or "", job.status, outputs, errors)
    output_console().print(table)


async def show_status(settings: Settings, job_id: str, *, follow: bool) -> int:
    async with Services.open(settings, name="jetmedia-cli", layout=False) as services:
        if follow:
            await wait_for_jobs(services.jobs, [job_id], timeout=24 * 3600)
        job = await services.jobs.get(job_id)
        if job is None:
            print(f"no job {job_id!r}")
            return 1
        print(msgspec.json.format(msgspec.json.encode(job)).decode())
        return 0 if job.status != "failed" else 1


async def cancel(settings: Settings, job_id: str) -> int:
    async with Services.open(settings, name="jetmedia-cli", layout=False) as services:
        try:
            cancelled = await services.cancel(job_id)
        except KeyError:
            print(f"no job {job_id!r}")
            return 1
        job = await services.jobs.get(job_id)
        print(f"job {job_id}: {job.status if job else 'gone'}")
        return 0 if cancelled else 1


async def read_dead_letters(services: Services, stage: str | None = None, limit: int = 1000) -> list[m.DeadLetter]:
    """Every dead letter in JM_DLQ (optionally one stage's), oldest first."""
    subject = f"{m.DLQ_PREFIX}.{stage}" if stage else f"{m.DLQ_PREFIX}.>"
    events = await bus.read_stream(services.js, "JM_DLQ", subject, limit)
    return [event for event in events if isinstance(event, m.DeadLetter)]


async def list_dead_letters(settings: Settings, stage: str | None, limit: int) -> int:
    async with Services.open(settings, name="jetmedia-cli", layout=False) as services:
        letters = await read_dead_letters(services, stage, limit)
        table = Table(title=f"dead letters ({len(letters)})")
        for column in ("time", "stage", "job", "error", "deliveries"):
            table.add_column(column)
        for letter in letters:
            d = letter.data
            table.add_row(str(letter.time), d.stage, d.job or "", f"{d.error_class}: {d.error}", str(d.delivery_count))
        output_console().print(table)
        return 0
