"""upload (exports): a producer wants one ZIP of many objects — check the request, plan the work.

Resolves the sources (listed keys, named items, everything under a prefix), gives each one its
name inside the archive here, once, so names are unique across the whole export whatever the
chunking, and sends one `chunk` message per <= 100 files / <= 50 MB. Chunk message ids derive
from the job and the chunk number, so a redelivered request re-sends nothing new.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared import messages as m
from shared.exportplan import (
    ARCHIVES,
    TRANSFORM_EXTENSIONS,
    NameRegistry,
    archive_name,
    default_name,
    plan_runs,
    sanitise,
    with_extension,
)
from shared.jobs import Job, new_job
from shared.runtime import Context, Emit, Reject

TRANSFORMS = tuple(TRANSFORM_EXTENSIONS)  # original, mp3, opus, display


async def start_export(event: m.ExportRequested, ctx: Context) -> list[Emit]:
    data = event.data
    job_id = m.job_of(event)
    assert job_id is not None
    archive = archive_name(data.name, job_id)
    job, _started = await ctx.jobs.start(
        new_job(job_id, "export", status="running", stage="upload", archive=archive, compression=data.compression,
                transform=data.transform, callback_url=data.callback_url),
        ctx.stream_seq,
    )
    if job.final:
        return []  # a replay of a job that already ended
    ctx.attempt = job.attempt
    if data.callback_url and (problem := m.callback_problem(data.callback_url)):
        raise Reject(problem)
    if data.transform not in TRANSFORMS:
        raise Reject(f"transform {data.transform!r} is not available (supported: {', '.join(TRANSFORMS)})")
    bucket = data.bucket or ctx.settings.bucket
    if not await ctx.storage.bucket_exists(bucket):
        raise Reject(f"source bucket {bucket!r} does not exist")

    limit = ctx.settings.export_max_files
    wanted: list[tuple[str, str | None, int | None]] = [(key, None, None) for key in data.keys]
    wanted += [(item.key, item.name, None) for item in data.items]
    if data.prefix is not None and len(wanted) <= limit:
        wanted += [(key, None, size) for key, size in await _list(ctx, bucket, data.prefix, limit + 1 - len(wanted))]
    wanted = _once(wanted)
    if not wanted:
        where = f" under s3://{bucket}/{data.prefix}" if data.prefix is not None else ""
        raise Reject(f"nothing to export: the request names no objects{where}")
    if len(wanted) > limit:
        count = f"more than {limit}" if data.prefix is not None else str(len(wanted))
        raise Reject(f"export names {count} objects, over the limit of {limit} (JETMEDIA_EXPORT_MAX_FILES)")

    names = NameRegistry()
    ext = TRANSFORM_EXTENSIONS[data.transform]

    def archived_as(key: str, name: str | None) -> str:
        """Named once here, with the transform's extension (song.wav -> song.mp3), so the names
        stay unique across the whole export after the change."""
        wanted_name = name or default_name(key, data.prefix)
        return names.add(with_extension(sanitise(wanted_name), ext) if ext else wanted_name)

    items = [m.ExportItem(key=key, name=archived_as(key, name)) for key, name, _ in wanted]
    runs = plan_runs([size for _, _, size in wanted], ctx.settings.export_chunk_files, ctx.settings.export_chunk_bytes)

    def planned(current: Job) -> Job:
        if current.final or current.chunks:  # a redelivery: the first plan stands
            return current
        return msgspec.structs.replace(current, stage="chunk", total=len(items), chunks=len(runs))

    await ctx.jobs.update(job_id, planned)
    return [
        Emit(m.CHUNK, m.ChunkRequested(
            id=m.derived_id(job_id, "chunk", str(n)), source=ctx.settings.source, time=m.now(), subject=job_id,
            data=m.ChunkRequestedData(job=job_id, chunk=n, bucket=bucket, items=[items[i] for i in run],
                                      transform=data.transform),
        ))
        for n, run in enumerate(runs)
    ]


def _once(wanted: list[tuple[str, str | None, int | None]]) -> list[tuple[str, str | None, int | None]]:
    """An object asked for twice without a name of its own (twice in `keys`, or in `keys` and
    under `prefix`) is archived once: it came out as `a.jpg` and `a (1).jpg`, the same bytes. An
    `items` entry names its copy itself, and is kept."""
    seen: set[str] = set()
    kept = []
    for key, name, size in wanted:
        if name is None:
            if key in seen:
                continue
            seen.add(key)
        kept.append((key, name, size))
    return kept


async def _list(ctx: Context, bucket: str, prefix: str, most: int) -> list[tuple[str, int]]:
    """Keys and sizes under a prefix (sizes let chunks respect the byte limit), at most `most`:
    past the export's limit the answer is no anyway, and `"prefix": ""` on a bucket of millions
    of objects listed them all (minutes of requests, gigabytes of keys) before saying so."""
    found: list[tuple[str, int]] = []
    paginator = ctx.storage.client.get_paginator("list_objects_v2")
    page: dict[str, Any]
    # jetmedia's own archives are not the user's files: `"prefix": ""` archived every earlier export
    # (and the outputs of exports still running, which cleanup may delete mid-export); asked for by
    # name (`"prefix": "exports/…"`), they are exported
    ours = ARCHIVES if bucket == ctx.settings.bucket and not prefix.startswith(ARCHIVES) else None
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        found.extend((item["Key"], int(item["Size"])) for item in page.get("Contents", [])
                     if not is_folder_marker(item["Key"], int(item["Size"]))
                     and not (ours and item["Key"].startswith(ours)))
        ctx.progress()
        if len(found) >= most:
            break
    return found[:most]


def is_folder_marker(key: str, size: int) -> bool:
    """An empty object whose key ends in `/`: what the S3 consoles' "Create folder" leaves. It
    holds nothing, and archived it became an empty file `photos` beside which the real folder had
    to be renamed `photos (1)/`."""
    return size == 0 and key.endswith("/")


async def cancel_job(event: m.CancelRequested, ctx: Context) -> list[Emit]:
    """Mark the job cancelled; every worker running a piece of it stops at its next boundary."""
    try:
        await ctx.services.cancel(event.data.job, event.data.reason)
    except KeyError:
        raise Reject(f"cannot cancel job {event.data.job!r}: no such job") from None
    return []
