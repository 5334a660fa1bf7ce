"""What a person (or a script) does with a running pipeline: submit, export, watch, list, cancel, inspect.

Conventions (clig.dev, and what `gh`/`kubectl` users expect): data on stdout — a table, or with
`--json` one JSON document (JSON lines for streams) whose field names are the schemas' — and
messages, progress bars and errors on stderr. NATS and S3 are given `JETMEDIA_CONNECT_TIMEOUT`
seconds, then the command stops with one line (exit 3, see cli.py); workers keep retrying instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.errors import UnknownJob
from shared.jobs import FINAL_STATUSES, RERUNNABLE, Job, JobStore, fraction, recent_jobs
from shared.runtime import Services
from shared.storage import Storage, StorageUnreachable

console = Console(stderr=True)  # messages and progress; rich honours NO_COLOR and drops ANSI when piped
JOB_STATUSES = ("queued", "running", *sorted(FINAL_STATUSES))
POLL_EVERY = 0.2  # seconds between job-record reads while waiting
STATUS_STYLE = {"queued": "cyan", "running": "cyan", "ready": "green", "failed": "red", "cancelled": "yellow",
                "expired": "yellow"}


class UsageError(ValueError):
    """The command line asks for something that cannot work (a missing file, a bad job id): exit 2."""


class JobNotFound(LookupError):
    """The job has no record (never submitted, a typo, or removed): exit 1."""


def output_console() -> Console:
    """Tables on stdout; piped output (CI logs, scripts) gets full lines instead of 80 columns."""
    out = Console()
    if not out.is_terminal:
        out.width = 200
    return out


def emit_json(value: Any) -> None:
    """One JSON document (or one JSON line of a stream) on stdout, fields as in the schemas."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


def job_id_arg(value: str) -> str:
    """A job id from the command line, checked before anything connects."""
    if not m.is_job_id(value):
        raise UsageError(f"{value!r} is not a job id (letters, digits, - _ = and single dots; "
                         f"at most {m.JOB_ID_MAX} characters)")
    return value


@contextlib.asynccontextmanager
async def connected(settings: Settings, *, s3: bool = False, layout: bool = False) -> AsyncIterator[Services]:
    """NATS (and with `s3`, a checked S3) within `connect_timeout`, as the Services handlers use;
    `layout` creates the streams first (so a submit before any worker started is kept)."""
    nc = await bus.connect(settings, "jetmedia-cli", wait=settings.connect_timeout, quiet=True)
    try:
        js = nc.jetstream(timeout=max(settings.connect_timeout, 1.0))
        if layout and not await bus.layout_exists(nc, timeout=max(settings.connect_timeout, 1.0)):
            await bus.ensure_layout(js, settings)
        jobs = await JobStore.open(js, settings.replicas)
        async with Storage(settings) as storage:
            if s3:
                await reach_s3(settings)
                await storage.check(timeout=max(settings.connect_timeout, 3.0))  # it answers: credentials, bucket
            services = Services(settings, nc, js, jobs, storage)
            try:
                yield services
            finally:
                await services.close()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)


async def reach_s3(settings: Settings) -> None:
    """A TCP connection to the S3 endpoint within `connect_timeout`: a down or mistyped endpoint is
    named at once (making a boto client alone takes ~0.4 s, and its retries longer)."""
    if not settings.s3_endpoint:
        return  # AWS: the boto check says the rest
    url = urllib.parse.urlsplit(settings.s3_endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    hint = "(is the server running? is JETMEDIA_S3_ENDPOINT right?)"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, port), settings.connect_timeout)
    except TimeoutError:
        raise StorageUnreachable(f"cannot connect to S3 endpoint {settings.s3_endpoint}: no answer within "
                                 f"{settings.connect_timeout:g} s {hint}") from None
    except OSError as exc:
        raise StorageUnreachable(f"cannot connect to S3 endpoint {settings.s3_endpoint}: "
                                 f"{bus.describe_cause(exc)} {hint}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# --- progress ---------------------------------------------------------------------------


def describe(job: Job) -> str:
    """The status words next to a bar (and the line piped output gets)."""
    text = f"{job.status} ({job.stage})" if not job.final else job.status
    if job.kind == "export" and job.total:  # two counts, named: "643/643 files" went back to "283/643 files"
        text += f" {job.archived}/{job.total} archived" if job.archived else f" {job.done}/{job.total} checked"
        if job.archived_bytes:
            text += f", {_size(job.archived_bytes)}"
    elif job.percent is not None and not job.final:
        text += f" {job.percent:.0f}%"
    return text


def status_text(job: Job) -> Text:
    """`describe` in the status's colour (none when piped or with NO_COLOR: rich decides)."""
    return Text(describe(job), style=STATUS_STYLE.get(job.status, ""))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


NO_RECORD_HINT = 30.0
"""Seconds without any record of a submitted job after which `--wait` asks whether a worker runs:
with none, the bar said "queued" (and piped output nothing) for as long as the wait lasted."""
MAX_BARS = 10
"""More jobs than this get one bar for them all on a terminal: 200 bars redrawn ten times a second
took ~17 s of CPU and 1.6 MB of terminal output, and a 24-line terminal showed only the first 20."""


async def wait_for_jobs(
    jobs: JobStore, ids: Sequence[str], *, timeout: float = 600.0, label: str = "job", show: bool = True,
    lines: bool | None = None, stale: dict[str, datetime] | None = None,
) -> list[Job]:
    """Poll the KV records until every job is final: one bar per job on a terminal (one for all
    beyond MAX_BARS), a plain line per change when piped (`lines`), nothing with `show=False`.
    Ctrl-C, or NATS gone mid-wait, says which jobs still run. A record not changed since its
    `stale` time is the attempt before the one being waited for: it counts as not there yet.

    Polling (not a KV watch) on purpose: a few gets per second cost nothing here, and it
    sidesteps nats-py's known watcher bugs (#584, #842, #898). A job that ended is not read again."""
    deadline = time.monotonic() + timeout
    records: dict[str, Job | None] = dict.fromkeys(ids)
    bars_on = show and console.is_terminal
    lines = show and not bars_on if lines is None else lines
    said: dict[str, str] = {}
    hint_at = time.monotonic() + NO_RECORD_HINT
    wide = console.width >= 120
    with Progress(*_progress_columns(wide), console=console, disable=not bars_on, transient=False) as progress:
        many = len(ids) > MAX_BARS
        bars: dict[str, TaskID] = {} if many else {
            job: progress.add_task(f"{label} {job[:24 if wide else 12]}", total=100, status="queued") for job in ids
        }
        overall = progress.add_task(f"{len(ids)} {label}s", total=100, status="queued") if many else None
        try:
            while time.monotonic() < deadline:
                for job_id in ids:
                    if (known := records[job_id]) is not None and known.final:
                        continue
                    record = await jobs.get(job_id)
                    if record is not None and stale and job_id in stale and record.updated <= stale[job_id]:
                        record = None
                    records[job_id] = record
                    if record is None:
                        continue
                    if job_id in bars:
                        progress.update(bars[job_id], completed=100 * fraction(record), status=describe(record))
                    if lines:
                        line = f"{label} {job_id}: {_coarse(record)}"
                        if said.get(job_id) != line:
                            said[job_id] = line
                            print(line, file=sys.stderr, flush=True)
                if overall is not None:
                    progress.update(overall, completed=_mean_percent(records.values()), status=_tally(records.values()))
                if all(r is not None and r.final for r in records.values()):
                    break
                if show and time.monotonic() > hint_at:
                    hint_at = float("inf")
                    _hint_no_worker([job for job, r in records.items() if r is None], progress)
                await asyncio.sleep(POLL_EVERY)
            else:  # the deadline: not "a job failed" in silence while they still run
                progress.stop()
                _say_still_running([job for job in ids if not ((r := records[job]) and r.final)],
                                   f"stopped waiting after {_duration(timeout)}")
        except BaseException as exc:  # Ctrl-C (asyncio.run cancels us: exit 130), or NATS gone (exit 3)
            progress.stop()
            why = "interrupted" if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt) else "stopped watching"
            _say_still_running([job for job in ids if not ((r := records[job]) and r.final)], why)
            raise
    return [r for r in records.values() if r is not None]


def _hint_no_worker(ids: Sequence[str], progress: Progress) -> None:
    """Once, when jobs still have no record: the upload stage makes it, so none runs (or NATS is
    another one than the workers'), or it is far behind."""
    if ids:
        text = (f"no record yet of {len(ids)} job(s) after {_duration(NO_RECORD_HINT)} ({ids[0]}, ...): is a worker "
                "running against this NATS (jetmedia worker, jetmedia up)? still waiting")
        progress.console.print(text, markup=False, highlight=False, soft_wrap=True, style=None)


def _progress_columns(wide: bool) -> list[ProgressColumn]:
    """A bar's columns; a narrower terminal keeps a short bar, the status words and the ETA, and
    drops the elapsed time (all of them squeezed into 40 columns left "job 0b71… …  que… e…", and an
    export's words into 100 a bar of 4 and "0:0…")."""
    if not wide:
        return [TextColumn("{task.description}"), BarColumn(bar_width=10), TaskProgressColumn(),
                TextColumn("{task.fields[status]}"), TimeRemainingColumn()]
    return [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _mean_percent(records: Iterable[Job | None]) -> float:
    """The bar of many jobs: their mean progress (a job without a record yet counts as 0)."""
    shares = [fraction(r) if r is not None else 0.0 for r in records]
    return 100 * sum(shares) / max(len(shares), 1)


def _tally(records: Iterable[Job | None]) -> str:
    """The words beside the bar of many jobs: "3 running, 190 ready, 7 failed"."""
    counts: collections.Counter[str] = collections.Counter(r.status if r else "queued" for r in records)
    return ", ".join(f"{counts[status]} {status}" for status in JOB_STATUSES if counts[status])


def _coarse(job: Job) -> str:
    """The piped progress line: changes at most every 10 % so logs stay short."""
    text = describe(job)
    if job.percent is not None and not job.final:
        text = text.rsplit(" ", 1)[0] + f" {int(job.percent // 10 * 10)}%"
    return text


def _say_still_running(ids: Sequence[str], why: str = "interrupted") -> None:
    """What the person can do about the jobs left running (their ids: ten of them at most)."""
    if not ids:
        return
    more = f" and {len(ids) - 10} more (jetmedia jobs --status running)" if len(ids) > 10 else ""
    print(f"{why}; still running: {' '.join(ids[:10])}{more}", file=sys.stderr)
    print(f"  follow: jetmedia status --follow {ids[0]}", file=sys.stderr)
    print(f"  cancel: jetmedia cancel {ids[0]}", file=sys.stderr, flush=True)


# --- submit / export ----------------------------------------------------------------------


def check_files(files: Sequence[Path]) -> None:
    """Every file before any upload: a missing one must not leave the others half-submitted."""
    for path in files:
        if not path.exists():
            raise UsageError(f"{path}: no such file")
        if path.is_dir():
            raise UsageError(f"{path}: is a directory (submit files, e.g. {path}/*)")
        if not path.is_file():
            raise UsageError(f"{path}: not a regular file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{path}: not readable")
        if path.stat().st_size == 0:  # the upload stage refuses it anyway, after the batch went out
            raise UsageError(f"{path}: empty (0 bytes)")


def check_callback_url(url: str | None) -> None:
    """`--callback-url` checked as the upload stage checks it, before any upload: a bad one
    otherwise failed each job after its file went up."""
    if url is None:
        return
    flaw = m.callback_flaw(url)
    if flaw is None:
        try:
            msgspec.convert(url, m.CallbackUrl)
        except msgspec.ValidationError:
            flaw = "is not an http(s) URL (a host, no user:password@)"
    if flaw:  # about the URL as typed (the record's copy hides parts of it: url_shown)
        raise UsageError(f"--callback-url {url[:200]!r} {flaw}")


async def check_job_free(jobs: JobStore, job_id: str | None) -> dict[str, datetime]:
    """`--job-id` of a job that exists runs nothing (README: Running a job again) unless it failed
    or was cancelled: say so before uploading, not wait on the old record and print its outputs.
    Returns the failed or cancelled record's last change, which `wait_for_jobs` must see pass (its
    old final record, read at once, made `--wait` report the last attempt's failure)."""
    existing = await jobs.get(job_id) if job_id else None
    if existing is None:
        return {}
    if existing.status in RERUNNABLE:
        return {existing.id: existing.updated}
    if existing.final:
        raise UsageError(f"job {job_id!r} exists already ({existing.status}) and never runs again; "
                         "choose a new --job-id")
    raise UsageError(f"job {job_id!r} is {existing.status} already; follow it: jetmedia status --follow {job_id}")


async def upload(services: Services, path: Path, key: str) -> None:
    """One file to S3; a key or bucket S3 refuses is named with the file (exit 2), not "unexpected
    error: InvalidRequest" (SeaweedFS refuses a key such as ../x.jpg)."""
    try:
        await services.storage.upload_file(key, str(path))
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise UsageError(f"{path}: S3 refused s3://{services.settings.bucket}/{key}: "
                         f"{error.get('Code', '?')}: {error.get('Message', exc)}") from None


async def publish_asset(services: Services, key: str, *, event_id: str | None = None, bucket: str | None = None,
                        job_id: str | None = None, presets: list[str] | None = None,
                        priority: m.Priority | None = None, callback_url: str | None = None) -> str:
    """Start an asset job for an object already in S3; returns the job id."""
    event = m.AssetUploaded(
        id=event_id or m.new_id(), source="jetmedia-cli", time=m.now(),
        data=m.AssetUploadedData(key=key, bucket=bucket, job_id=job_id, presets=presets, priority=priority,
                                 callback_url=callback_url),
    )
    await bus.publish(services.js, m.UPLOAD_ASSET, event)
    job = m.job_of(event)
    assert job is not None
    return job


async def submit_files(
    settings: Settings, files: Sequence[Path], *, wait: bool, as_json: bool = False, presets: list[str] | None = None,
    job_id: str | None = None, key: str | None = None, bucket: str | None = None,
    priority: m.Priority | None = None, callback_url: str | None = None,
) -> int:
    check_files(files)
    if len(files) > 1 and (job_id or key):
        raise UsageError("--job-id and --key name one job: submit one file with them")
    if job_id:
        job_id_arg(job_id)
    check_callback_url(callback_url)
    if bucket:
        settings = settings.replace(bucket=bucket)
    submitted: list[dict[str, Any]] = []
    async with connected(settings, s3=True, layout=True) as services:
        stale = await check_job_free(services.jobs, job_id)
        try:
            for path in files:
                object_key = key or f"uploads/{m.new_id()[:12]}/{CONTROL.sub('_', printable(path.name))}"
                await upload(services, path, object_key)
                job = await publish_asset(services, object_key, bucket=bucket, job_id=job_id, presets=presets,
                                          priority=priority, callback_url=callback_url)
                submitted.append({"file": printable(str(path)), "bucket": settings.bucket, "key": object_key,
                                  "job": job})
                if not as_json:
                    shown = CONTROL.sub(lambda c: repr(c.group())[1:-1], printable(str(path)))
                    print(f"{shown}\tjob {job}\ts3://{settings.bucket}/{object_key}", flush=True)
        except asyncio.CancelledError:  # Ctrl-C among 200 uploads: the jobs already started run on
            _say_submitted(submitted, len(files), as_json)
            raise
        if not wait:
            if as_json:
                emit_json([{**one, "record": None} for one in submitted])
            return 0
        done = {job.id: job for job in await wait_for_jobs(services.jobs, [s["job"] for s in submitted],
                                                            timeout=24 * 3600, stale=stale)}  # as export, status
    if as_json:
        emit_json([{**one, "record": done.get(one["job"])} for one in submitted])
    else:
        print_jobs(list(done.values()))
    return 0 if all(job.status == "ready" for job in done.values()) else 1


CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""In a file name: kept out of the S3 key (a key 'uploads/…/new<LF>line.jpg') and shown escaped in
the tab-separated line per file, which a newline split in two."""


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (Python keeps them as lone surrogates) become
    U+FFFD; botocore died on them ("unexpected error: UnicodeEncodeError"), after the earlier uploads."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _say_submitted(submitted: Sequence[dict[str, Any]], files: int, as_json: bool) -> None:
    """Ctrl-C during the uploads: which jobs started (with --json, their list on stdout: nothing
    else would name them) and that they run on."""
    if as_json:
        emit_json([{**one, "record": None} for one in submitted])
    where = "listed on stdout" if submitted else "none"
    print(f"interrupted after {len(submitted)} of {files} files; the jobs submitted ({where}) run on",
          file=sys.stderr, flush=True)


async def start_export(
    settings: Settings, keys: Sequence[str], *, prefix: str | None, name: str | None, transform: str,
    job_id: str | None, bucket: str | None, wait: bool, as_json: bool,
    priority: m.Priority | None = None, callback_url: str | None = None,
) -> int:
    if not keys and not prefix:
        raise UsageError("name the objects to export: KEY... and/or --prefix PREFIX")
    if job_id:
        job_id_arg(job_id)
    check_callback_url(callback_url)
    event = m.ExportRequested(
        id=m.new_id(), source="jetmedia-cli", time=m.now(),
        data=m.ExportRequestedData(keys=list(keys), prefix=prefix, name=name, transform=transform, job_id=job_id,
                                   bucket=bucket, priority=priority, callback_url=callback_url),
    )
    job = m.job_of(event)
    assert job is not None
    checked = settings.replace(bucket=bucket) if bucket else settings  # the bucket the sources are in
    async with connected(checked, s3=True, layout=True) as services:
        stale = await check_job_free(services.jobs, job_id)
        await bus.publish(services.js, m.UPLOAD_EXPORT, event)
        if not as_json:
            print(f"export job {job}", file=sys.stderr, flush=True)
        if not wait:
            if as_json:
                emit_json({"job": job, "record": None})
            else:
                print(job)
            return 0
        [record] = await wait_for_jobs(services.jobs, [job], timeout=24 * 3600, label="export", stale=stale)
    if as_json:
        emit_json({"job": job, "record": record})
    elif record.status == "ready":
        files = sum(part.files for part in record.exports)
        size = sum(part.bytes for part in record.exports)
        print(f"{files} files, {_size(size)}, {record.missing_count} missing; link valid until "
              f"{record.expires:%Y-%m-%d %H:%M} UTC:", file=sys.stderr)
        print(record.url)
    else:
        print(f"export {job} {record.status}: {_last_error(record)}", file=sys.stderr)
    return 0 if record.status == "ready" else 1


def _last_error(job: Job) -> str:
    return f"{job.errors[-1].stage}: {job.errors[-1].reason}" if job.errors else "no reason recorded"


# --- jobs ----------------------------------------------------------------------------------


NARROW = 80
"""Columns below which `submit --wait` prints each record as `status` does: six columns in 40 of
them folded every id and key into three-letter slices."""


def print_jobs(jobs: Sequence[Job]) -> None:
    if output_console().width < NARROW:
        for job in jobs:
            print_job(job)
            print()
        return
    table = Table(title="jobs")
    for column in ("job", "kind", "media", "status", "outputs", "errors"):
        table.add_column(column, overflow="fold")  # a narrow terminal wraps ids and keys, never cuts them to "b4…"
    for job in jobs:
        outputs = "\n".join(f"{o.key} ({o.width}x{o.height}, {o.bytes} B)" if o.width else f"{o.key} ({o.bytes} B)"
                            for o in job.outputs) or (job.url or "")
        errors = "\n".join(f"{e.stage}: {e.reason}" for e in job.errors[-3:])
        table.add_row(job.id, job.kind, job.media or "", Text(job.status, style=STATUS_STYLE.get(job.status, "")),
                      outputs, errors)
    output_console().print(table)


def print_job(job: Job) -> None:
    """One record for a person: what it is, where it stands, what it made, what went wrong."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("job", job.id), ("kind", job.kind + (f" ({job.media})" if job.media else "")),
        ("status", status_text(job)), ("progress", f"{100 * fraction(job):.0f}%"),
        ("created", f"{job.created:%Y-%m-%d %H:%M:%S} UTC"), ("updated", f"{job.updated:%Y-%m-%d %H:%M:%S} UTC"),
    ]
    if job.source_key:
        rows.append(("source", job.source_key))
    rows += [("output", f"{o.preset}: {o.key} ({o.bytes} B)") for o in job.outputs]
    rows += [("archive", f"{part.name} ({part.files} files, {_size(part.bytes)})") for part in job.exports]
    if job.url:
        rows.append(("url", job.url))
    if job.expires:
        rows.append(("expires", f"{job.expires:%Y-%m-%d %H:%M} UTC"))
    rows += [("error", f"{e.stage}: {e.reason}") for e in job.errors[-5:]]
    out = output_console()
    if not out.is_terminal:  # piped: a line each, not every line padded with spaces to the longest error
        for name, value in rows:
            out.print(Text.assemble(f"{name:<10}", value), soft_wrap=True, highlight=False)
        return
    for row in rows:
        table.add_row(*row)
    out.print(table, soft_wrap=True)


async def show_status(settings: Settings, job_id: str, *, follow: bool, as_json: bool = False) -> int:
    job_id_arg(job_id)
    async with connected(settings) as services:
        job = await services.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        streamed = follow and as_json and not job.final
        if streamed:
            job = await _follow_json(services.jobs, job)
        elif follow and not job.final:
            await wait_for_jobs(services.jobs, [job_id], timeout=24 * 3600)
            job = await services.jobs.get(job_id) or job
    if as_json:
        if not streamed:
            emit_json(job)
    else:
        print_job(job)
    return 1 if job.status == "failed" else 0


async def _follow_json(jobs: JobStore, job: Job) -> Job:
    """`status --follow --json`: one JSON line per change of the record, the last one final."""
    emit_json(job)
    while not job.final:
        await asyncio.sleep(POLL_EVERY)
        current = await jobs.get(job.id)
        if current is None:
            raise JobNotFound(f"job {job.id!r} was removed")
        if current.updated != job.updated:
            job = current
            emit_json(job)
    return job


async def cancel(settings: Settings, job_id: str, *, as_json: bool = False) -> int:
    job_id_arg(job_id)
    async with connected(settings) as services:
        try:
            cancelled = await services.cancel(job_id)
        except (UnknownJob, KeyError):
            raise JobNotFound(f"no job {job_id!r}") from None
        job = await services.jobs.get(job_id)
    if as_json:
        emit_json(job)
    elif cancelled:
        print(f"job {job_id}: cancelled")
    else:
        print(f"job {job_id}: already {job.status if job else 'gone'}; nothing to cancel", file=sys.stderr)
    return 0 if cancelled else 1


async def list_jobs(settings: Settings, *, status: str | None, kind: str | None, limit: int, as_json: bool) -> int:
    async with connected(settings) as services:
        jobs = await recent_jobs(services.jobs, limit,
                                 lambda j: (status is None or j.status == status) and (kind is None or j.kind == kind))
    if as_json:
        emit_json(jobs)
        return 0
    table = Table(title=f"jobs ({len(jobs)}, newest first)")
    for column in ("job", "kind", "status", "progress", "created", "error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(job.id, job.kind + (f"/{job.media}" if job.media else ""), status_text(job),
                      f"{100 * fraction(job):.0f}%", f"{job.created:%Y-%m-%d %H:%M:%S}",
                      _shorten(_last_error(job), 60) if job.errors else "")
    output_console().print(table)
    return 0


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --- events ------------------------------------------------------------------------------


def parse_since(value: str) -> datetime:
    """`--since`: an ISO time (UTC unless it says otherwise) or an age such as 90s, 15m, 2h, 1d."""
    age = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if age:
        seconds = float(age.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since {value!r}: use an ISO time (2026-01-31T12:00) or an age (90s, 15m, 2h, 1d)"
                         ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def event_line(event: m.AnyEvent) -> str:
    """One event for a person: time, type, job, what it says."""
    data: Any = getattr(event, "data", None)
    kind = event.__struct_config__.tag
    when = f"{event.time:%Y-%m-%d %H:%M:%S}" if event.time else "-"
    summary = ""
    if isinstance(event, m.AssetReady):
        summary = f"{event.data.media} ready, {len(event.data.outputs)} outputs"
    elif isinstance(event, m.ExportReady):
        summary = f"{event.data.url}"
    elif isinstance(event, m.JobFailed):
        summary = f"{event.data.stage}: {_shorten(event.data.error, 160)}"
    elif data is not None and hasattr(data, "key"):
        summary = str(data.key)
    return f"{when}  {kind:<28} {event.subject or '-':<34} {summary}"


async def show_events(
    settings: Settings, *, follow: bool, job: str | None, since: str | None, limit: int, as_json: bool,
) -> int:
    """JM_EVENTS: the last `limit` events (or those after `--since`), then with `--follow` new ones
    as they come (JSON lines with `--json`), until Ctrl-C."""
    if job:
        job_id_arg(job)
    start = parse_since(since) if since else None
    async with connected(settings) as services:
        js = services.js
        info = await js.stream_info("JM_EVENTS")
        if start is not None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                    opt_start_time=start)
        elif job or not info.state.messages:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL if job else DeliverPolicy.NEW)
        else:
            first = max(info.state.first_seq, info.state.last_seq - limit + 1)
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first)
        config.inactive_threshold = 30.0
        sub = await js.pull_subscribe("jetmedia.events.>", stream="JM_EVENTS", config=config)
        backlog: list[m.AnyEvent] = []
        try:
            caught_up = False
            while True:
                try:
                    batch = await sub.fetch(256, timeout=1.0 if follow and caught_up else 0.5)
                except TimeoutError:
                    batch = []
                for msg in batch:
                    await msg.ack()
                    try:
                        event = m.decode(msg.data)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue
                    if job and event.subject != job:
                        continue
                    if caught_up:
                        _print_event(event, as_json)
                    else:
                        backlog.append(event)
                if not batch and not caught_up:
                    caught_up = True
                    shown = backlog if start is not None and not job else backlog[-limit:] if limit > 0 else []
                    if as_json and not follow:
                        emit_json(shown)
                    else:
                        for event in shown:
                            _print_event(event, as_json)
                    if not follow:
                        return 0
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _print_event(event: m.AnyEvent, as_json: bool) -> None:
    if as_json:
        emit_json(event)
    else:
        print(event_line(event), flush=True)


# --- dead letters -------------------------------------------------------------------------


async def read_dead_letters(services: Services, stage: str | None = None, limit: int = 100_000) -> list[m.DeadLetter]:
    """Every dead letter in JM_DLQ (optionally one stage's), oldest first."""
    subject = f"{m.DLQ_PREFIX}.{stage}" if stage else f"{m.DLQ_PREFIX}.>"
    events = await bus.read_stream(services.js, "JM_DLQ", subject, limit)
    return [event for event in events if isinstance(event, m.DeadLetter)]


async def list_dead_letters(settings: Settings, stage: str | None, limit: int, *, as_json: bool = False) -> int:
    """The newest `limit` dead letters, newest first."""
    async with connected(settings) as services:
        letters = (await read_dead_letters(services, stage))[-limit:][::-1] if limit > 0 else []
    if as_json:
        emit_json(letters)
        return 0
    table = Table(title=f"dead letters ({len(letters)}, newest first; `jetmedia dlq show ID` for one)")
    for column in ("id", "time", "stage", "job", "error"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        d = letter.data
        when = f"{letter.time:%m-%d %H:%M:%S}" if letter.time else ""
        table.add_row(letter.id, when, d.stage, d.job or "", _shorten(f"{d.error_class}: {d.error}", 80))
    output_console().print(table)
    return 0


async def show_dead_letter(settings: Settings, letter_id: str, *, as_json: bool = False) -> int:
    """One dead letter whole: the error, where it came from, and the original message."""
    async with connected(settings) as services:
        letters = [letter for letter in await read_dead_letters(services) if letter.id == letter_id]
    if not letters:
        raise JobNotFound(f"no dead letter {letter_id!r} (ids as `jetmedia dlq` lists them)")
    letter = letters[-1]
    if as_json:
        emit_json(letter)
        return 0
    d = letter.data
    out = output_console()
    for name, value in (
        ("id", letter.id), ("time", f"{letter.time:%Y-%m-%d %H:%M:%S} UTC" if letter.time else "-"),
        ("stage", d.stage), ("job", d.job or "-"), ("error", f"{d.error_class}: {d.error}"),
        ("permanent", "yes" if d.permanent else f"no (gave up after {d.delivery_count} deliveries)"),
        ("from", f"{d.original_subject} ({d.stream} #{d.stream_seq})"),
        ("original", f"{d.original_size if d.original_size is not None else len(d.original)} bytes"
                     + (f", sha256 {d.original_sha256}" if d.original_sha256 else "")
                     + (", truncated" if d.original_truncated else "")),
    ):
        out.print(f"[bold]{name:<10}[/] {escape(value)}", soft_wrap=True, markup=True, highlight=False)
    payload = d.original_payload()
    try:
        text = msgspec.json.format(payload).decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        text = payload.decode("utf-8", errors="replace") if d.original_encoding == "utf-8" else d.original
    print(text)
    return 0
