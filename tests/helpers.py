"""What tests do again and again: run stages in the background, publish, wait, read streams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from services import stages
from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.jobs import Job
from shared.runtime import Services, Stage, run_stages

T = TypeVar("T")


@contextlib.asynccontextmanager
async def running(services: Services, stages: Sequence[Stage]) -> AsyncIterator[asyncio.Event]:
    """Run stages in this process for the duration of the block; drain them at the end."""
    stopping = asyncio.Event()
    task = asyncio.create_task(run_stages(services, stages, stopping))
    await asyncio.sleep(0.05)
    try:
        yield stopping
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def eventually(probe: Callable[[], Awaitable[T]], *, timeout: float = 20.0, every: float = 0.05) -> T:
    """Poll until `probe` returns something truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def stream_events(services: Services, stream: str, subject: str = ">") -> list[m.AnyEvent]:
    """Everything currently in a stream (read with an ephemeral consumer, nothing consumed)."""
    return await bus.read_stream(services.js, stream, subject)


def worker_process(settings: Settings, *stages: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A separate `jetmedia worker` process (a replica), pointed at the test stack."""
    variables = {**os.environ, **settings_env(settings), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", *stages],
        env=variables, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    return settings.as_env()


def asset_event(key: str, event_id: str | None = None, **data: object) -> m.AssetUploaded:
    return m.AssetUploaded(id=event_id or m.new_id(), source="test", time=m.now(),
                           data=m.AssetUploadedData(key=key, **data))  # type: ignore[arg-type]


def processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains `marker` (Linux /proc; zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != b"Z":
            found.append(int(entry))
    return found


# --- exports (appended for the export flow) ----------------------------------------------


def export_event(event_id: str | None = None, **data: object) -> m.ExportRequested:
    return m.ExportRequested(id=event_id or m.new_id(), source="test", time=m.now(),
                             data=m.ExportRequestedData(**data))  # type: ignore[arg-type]


async def final_job(services: Services, job_id: str):  # type: ignore[no-untyped-def]
    """The job record once it reached a final status, else None (for `eventually`)."""
    job = await services.jobs.get(job_id)
    return job if job is not None and job.final else None


ASSET_STAGES = ("upload", "transcode", "variant", "finalize")


async def run_asset(services: Services, key: str, job_id: str, timeout: float = 60) -> Job:
    """Publish the upload of `key` as job `job_id` with the asset stages running; its final record."""
    async with running(services, [stages.load(name) for name in ASSET_STAGES]):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(key, event_id=job_id))
        job: Job = await eventually(lambda: final_job(services, job_id), timeout=timeout)
        return job


def download(url: str, path: str) -> int:
    """GET a (presigned) URL into a file, streaming; returns the byte count."""
    import shutil
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as resp, open(path, "wb") as out:
        shutil.copyfileobj(resp, out, 1024 * 1024)
        return out.tell()


def zip_tools_accept(path: str) -> None:
    """`python -m zipfile -t`, `unzip -t` and `bsdtar -tf` all read the archive without error."""
    for command in ([sys.executable, "-m", "zipfile", "-t", path], ["unzip", "-tqq", path], ["bsdtar", "-tf", path]):
        done = subprocess.run(command, capture_output=True, timeout=600)
        assert done.returncode == 0, f"{command[0]} rejected {path}: {done.stdout[-2000:]!r} {done.stderr[-2000:]!r}"


def read_until(proc: subprocess.Popen[str], marker: str = "Ctrl-C stops everything.", timeout: float = 90.0) -> str:
    """A process's output up to the line holding `marker` (blocking reads: pytest-timeout ends a
    silent hang); fails with the tail of what it said otherwise."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if marker in line:
            return seen
    raise AssertionError(f"no {marker!r} from {proc.args}: {seen[-3000:]}")
