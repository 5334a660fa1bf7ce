"""chunk: checks one chunk of an export's sources and counts it; the last chunk starts finalize.

HEADs the sources (16 at a time) and records size, CRC-32 (when S3 holds one) and what is missing
under the chunk's own KV key (`{job}.chunk.{n}`, written whole, so a rerun just rewrites it), then
adds the chunk to the job's counters in one compare-and-set that also remembers *which* chunks are
counted: a redelivery never counts twice. The update that completes the set names this chunk
`finalize_by`; only that chunk emits `ExportFinalize`, with an id derived from the job, so a
redelivery of it re-sends the same message and the server drops the copy.

Missing sources do not fail the export: they are listed in the manifest.

With a per-item transform ("mp3", "opus", "display") the work is not done here: the chunk sends
one request per found source to the stage that owns it (transcode for "mp3"/"opus", variant for
"display"), each marked as item `index` of this chunk (`ExportItemRef`) and with an id derived
from job, chunk and index, so a redelivered chunk re-sends the same messages and JetStream drops
the copies. Those requests scale with the transcode/variant replicas, in the bulk lane, while this
stage needs neither ffmpeg nor libvips. The stage that makes an item counts it on the chunk's items
record, and the last item of the chunk writes the chunk record and counts the chunk exactly as
above (shared/exportitems.py).
"""

from __future__ import annotations

import asyncio

import msgspec
from botocore.exceptions import ClientError

from shared import exportitems
from shared import messages as m
from shared.errors import s3_status
from shared.exportplan import ChunkRecord, SourceInfo, chunk_key
from shared.runtime import Context, Emit, Reject, Stage
from shared.storage import ObjectInfo

HEADS_IN_FLIGHT = 16  # per chunk: four chunks at a time (the stage's concurrency) fit the S3 client's 64 connections
TRANSFORM_STAGES = {"mp3": m.TRANSCODE, "opus": m.TRANSCODE, "display": m.VARIANT}  # transform -> subject

_encoder = msgspec.json.Encoder()


async def handle(event: m.ChunkRequested, ctx: Context) -> list[Emit]:
    data = event.data
    job = await ctx.jobs.get(data.job)
    if job is None:
        raise Reject(f"export job {data.job!r} has no record")
    if job.final:
        return []
    if data.transform != "original" and data.transform not in TRANSFORM_STAGES:
        raise Reject(f"unknown export transform {data.transform!r}")

    record = await check_sources(data, ctx)
    if record.missing and not await ctx.storage.bucket_exists(data.bucket):
        raise Reject(f"source bucket {data.bucket!r} does not exist")  # not an archive of nothing
    if data.transform != "original" and record.found:
        return await send_items(data, record, ctx)
    await ctx.jobs.put_raw(chunk_key(data.job, data.chunk), _encoder.encode(record))
    return await exportitems.count_chunk(ctx, data.job, record, len(data.items))


async def send_items(data: m.ChunkRequestedData, record: ChunkRecord, ctx: Context) -> list[Emit]:
    """One request per found source to the stage that makes the transform's output."""
    items = await exportitems.send_out(ctx, data.job, record, len(data.items))
    if items is None:  # already complete and counted (a late redelivery)
        return []
    if items.complete:  # every item is in, but the one that completed it stopped short
        return await exportitems.finish(ctx, data.job, items)
    done = items.done_indexes()
    return [item_request(ctx, data, items.bucket, index, source, items.attempt)
            for index, source in enumerate(items.sources) if index not in done]


def item_request(ctx: Context, data: m.ChunkRequestedData, bucket: str, index: int, source: SourceInfo,
                 attempt: int) -> Emit:
    ref = m.ExportItemRef(chunk=data.chunk, index=index, attempt=attempt)
    asset = f"export-item-{data.chunk}-{index}"
    event_id = m.derived_id(data.job, "export-item", f"{data.chunk}-{index}")
    subject = TRANSFORM_STAGES[data.transform]
    if subject == m.VARIANT:
        return Emit(subject, m.VariantRequested(
            id=event_id, source=ctx.settings.source, time=m.now(), subject=data.job,
            data=m.VariantRequestedData(job=data.job, asset=asset, bucket=bucket, key=source.key, part="export",
                                        presets=[data.transform], export=ref)))
    return Emit(subject, m.TranscodeRequested(
        id=event_id, source=ctx.settings.source, time=m.now(), subject=data.job,
        data=m.TranscodeRequestedData(job=data.job, asset=asset, bucket=bucket, key=source.key, media="audio",
                                      presets=[data.transform], export=ref)))


async def check_sources(data: m.ChunkRequestedData, ctx: Context) -> ChunkRecord:
    """HEAD every source, `HEADS_IN_FLIGHT` at a time, each slot taking the next source as soon
    as its HEAD is answered (batches of ten waited for each batch's slowest HEAD). The archive
    cannot start before the last HEAD: 180 sources took 0.40 s, now 0.33-0.37 (a HEAD costs
    ~1.6 ms of botocore CPU on the loop, so more in flight gains little). The first error is
    raised and the other HEADs are cancelled; so is a cancel of the handler."""
    infos: list[ObjectInfo | None] = [None] * len(data.items)
    todo = iter(enumerate(data.items))

    async def head_next() -> None:
        for index, item in todo:  # the iterator is shared: each source is HEADed once
            infos[index] = await head(ctx, data.bucket, item.key)
            ctx.progress()

    slots = [asyncio.ensure_future(head_next()) for _ in range(min(HEADS_IN_FLIGHT, len(data.items)))]
    try:
        await asyncio.gather(*slots)
    finally:
        for slot in slots:
            slot.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
    found: list[SourceInfo] = []
    missing: list[m.ExportItem] = []
    for item, info in zip(data.items, infos, strict=True):
        if info is None:
            missing.append(item)
        else:
            found.append(SourceInfo(key=item.key, name=item.name or item.key, size=info.size,
                                    crc32=info.crc32, etag=info.etag, modified=info.modified))
    return ChunkRecord(chunk=data.chunk, bucket=data.bucket, found=found, missing=missing)


async def head(ctx: Context, bucket: str, key: str) -> ObjectInfo | None:
    """A source's HEAD on the hand-signed path (shared/fasts3.py: ~0.3 ms of the event loop, not
    ~1.6 through botocore, and the archive cannot start before the last one); anything but a
    200 there, a missing source included, is asked again through `Storage.head`."""
    fast = await ctx.services.fast_s3.head(bucket, key)
    if fast is None:
        try:
            return await ctx.storage.head(key, bucket)
        except ClientError as exc:
            if s3_status(exc) == 400:  # S3 refuses the key itself (SeaweedFS: `..` segments, NUL): no
                return None  # object has it, so it is missing; retrying it only failed the whole export
            raise
    size, crc32, etag, modified = fast
    return ObjectInfo(key=key, size=size, content_type=None, crc32=crc32, etag=etag, modified=modified)


STAGE = Stage(name="chunk", stream="JM_CHUNK", handle=handle, accepts=(m.ChunkRequested,))
