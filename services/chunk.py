"""chunk: checks one chunk of an export's sources and counts it; the last chunk starts finalize.

HEADs the sources ten at a time, records size, CRC-32 (when S3 holds one) and what is missing
under the chunk's own KV key (`{job}.chunk.{n}`, written whole, so a rerun just rewrites it),
then adds the chunk to the job's counters in one compare-and-set that also remembers *which*
chunks are counted: a redelivery never counts twice. The update that completes the set names
this chunk `finalize_by`; only that chunk emits `ExportFinalize`, with an id derived from the
job, so a redelivery of it re-sends the same message and the server drops the copy.

Missing sources do not fail the export: they are listed in the manifest.

With a per-item transform ("mp3", "opus", "display"), each found source is then made into its
output, two at a time (`TRANSFORM_PARALLEL`), and the record points finalize at the output object
(its own size and CRC-32, from a HEAD); the archive name already carries the output's extension
(the upload stage named it). A source the transform cannot apply to (an image under "mp3", a
corrupt file) is recorded as `untransformed` with the reason and listed in the manifest. Outputs
live at deterministic keys, so a redelivered chunk overwrites them; a cancelled chunk deletes the
outputs it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import msgspec
from botocore.exceptions import ClientError

# Crossing stages on purpose: these two modules expose their pure work exactly for this use.
from services.transcode.work import transcode_file
from services.upload.export import bucket_exists
from services.variant import images, presets
from shared import messages as m
from shared.exportplan import ChunkRecord, SourceInfo, Untransformed, chunk_key
from shared.jobs import Job
from shared.runtime import Context, Emit, Reject, Retry, Stage

HEAD_BATCH = 10
TRANSFORM_PARALLEL = 2  # transcodes/renders at a time per chunk (CPU-bound: about one per core)
MISSING_IN_RECORD = 50  # the job record keeps the first few missing keys; the manifest has all

_encoder = msgspec.json.Encoder()


async def handle(event: m.ChunkRequested, ctx: Context) -> list[Emit]:
    data = event.data
    job = await ctx.jobs.get(data.job)
    if job is None:
        raise Reject(f"export job {data.job!r} has no record")
    if job.final:
        return []

    record = await check_sources(data, ctx)
    if record.missing and not await bucket_exists(ctx, data.bucket):
        raise Reject(f"source bucket {data.bucket!r} does not exist")  # not an archive of nothing
    if data.transform != "original":
        record = await transform_sources(record, data.transform, ctx)
    await ctx.jobs.put_raw(chunk_key(data.job, data.chunk), _encoder.encode(record))
    size = sum(source.size for source in record.found)

    def count(current: Job) -> Job:
        if current.final or data.chunk in current.chunks_counted:
            return current
        counted = sorted([*current.chunks_counted, data.chunk])
        complete = len(counted) >= current.chunks
        missing = [item.key for item in record.missing]
        return msgspec.structs.replace(
            current, chunks_counted=counted, done=current.done + len(data.items), bytes=current.bytes + size,
            missing=[*current.missing, *missing][:MISSING_IN_RECORD],
            missing_count=current.missing_count + len(missing),
            untransformed_count=current.untransformed_count + len(record.untransformed),
            finalize_by=data.chunk if complete else None, stage="finalize" if complete else "chunk",
        )

    job = await ctx.jobs.update(data.job, count)
    if job.final or job.finalize_by != data.chunk:
        return []
    finalize = m.ExportFinalize(
        id=m.derived_id(job.id, "finalize-export"), source=ctx.settings.source, time=m.now(), subject=job.id,
        data=m.ExportFinalizeData(job=job.id, chunks=job.chunks),
    )
    return [Emit(m.FINALIZE_EXPORT, finalize)]


async def check_sources(data: m.ChunkRequestedData, ctx: Context) -> ChunkRecord:
    """HEAD every source, ten in parallel at a time; a cancel stops between batches."""
    found: list[SourceInfo] = []
    missing: list[m.ExportItem] = []
    for start in range(0, len(data.items), HEAD_BATCH):
        batch = data.items[start:start + HEAD_BATCH]
        infos = await asyncio.gather(*(ctx.storage.head(item.key, data.bucket) for item in batch))
        for item, info in zip(batch, infos, strict=True):
            if info is None:
                missing.append(item)
            else:
                found.append(SourceInfo(key=item.key, name=item.name or item.key, size=info.size,
                                        crc32=info.crc32, etag=info.etag))
        ctx.progress()
    return ChunkRecord(chunk=data.chunk, bucket=data.bucket, found=found, missing=missing)


async def transform_sources(record: ChunkRecord, transform: str, ctx: Context) -> ChunkRecord:
    """Apply the export's transform to every found source, TRANSFORM_PARALLEL at a time."""
    gate = asyncio.Semaphore(TRANSFORM_PARALLEL)
    made: list[tuple[str, str]] = []  # (bucket, key) of outputs this run wrote

    async def one(source: SourceInfo) -> SourceInfo | Untransformed:
        async with gate:
            try:
                bucket, key = await apply_transform(ctx, transform, source.key, record.bucket)
            except Reject as exc:
                ctx.progress()
                return Untransformed(key=source.key, name=source.name, reason=str(exc))
            made.append((bucket, key))
            info = await ctx.storage.head(key, bucket)
            if info is None:
                raise Retry(f"transform output s3://{bucket}/{key} vanished right after it was written")
            ctx.progress()
            return SourceInfo(key=key, name=source.name, size=info.size, crc32=info.crc32, etag=info.etag,
                              bucket=None if bucket == record.bucket else bucket, source=source.key)

    tasks = [asyncio.ensure_future(one(source)) for source in record.found]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException as exc:
        for task in tasks:
            task.cancel()
        await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))  # ffmpeg killed, temp files gone
        if isinstance(exc, asyncio.CancelledError):  # a cancelled export leaves no outputs behind
            await asyncio.shield(_remove(ctx, made))
        raise
    found = [r for r in results if isinstance(r, SourceInfo)]
    failed = [r for r in results if isinstance(r, Untransformed)]
    return msgspec.structs.replace(record, found=found, untransformed=[*record.untransformed, *failed])


async def apply_transform(ctx: Context, transform: str, key: str, bucket: str) -> tuple[str, str]:
    """Make one source's output; returns where it is (bucket, key). `Reject`: cannot apply."""
    if transform in ("mp3", "opus"):
        output = await transcode_file(ctx, key, transform, bucket=bucket)
        return ctx.storage.bucket, output.key
    if transform == "display":
        return ctx.storage.bucket, await render_display(ctx, key, bucket)
    raise Reject(f"unknown export transform {transform!r}")


def display_preset(ctx: Context) -> presets.Preset:
    """The configured `display` variant preset (the built-in one if the configuration has none)."""
    configured = {p.name: p for p in presets.parse(ctx.settings.variant_presets)}
    builtin = {p.name: p for p in presets.BUILTIN}
    return configured.get("display", builtin["display"])


async def render_display(ctx: Context, key: str, bucket: str) -> str:
    """The image's display variant at `variants/src-{hash}/display.{ext}` (deterministic: a rerun
    overwrites it), made by the variant stage's own render function."""
    preset = display_preset(ctx)
    limit = min(ctx.settings.max_image_bytes, ctx.settings.max_source_bytes)
    try:
        source = await ctx.storage.get_bytes(key, bucket, first=limit + 1)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            raise Reject(f"source object s3://{bucket}/{key} no longer exists") from None
        raise
    if len(source) > limit:
        raise Reject(f"source image is over the limit of {limit} bytes")
    ctx.count_bytes("in", len(source))
    limits = images.Limits(max_pixels=ctx.settings.max_image_pixels, max_frames=ctx.settings.max_image_frames)
    rendered = await ctx.run_cpu(images.render, source, (preset,), limits, ctx.settings.vips_threads)
    [variant] = rendered.variants
    tag = "src-" + hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:20]
    out = f"variants/{tag}/{preset.name}.{preset.extension}"
    await ctx.storage.put_bytes(out, variant.data, content_type=preset.content_type)
    ctx.count_bytes("out", len(variant.data))
    return out


async def _remove(ctx: Context, objects: list[tuple[str, str]]) -> None:
    for bucket, key in objects:
        with contextlib.suppress(Exception):
            await ctx.storage.client.delete_object(Bucket=bucket, Key=key)


STAGE = Stage(name="chunk", stream="JM_CHUNK", handle=handle, accepts=(m.ChunkRequested,))
