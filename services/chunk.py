"""chunk: checks one chunk of an export's sources and counts it; the last chunk starts finalize.

HEADs the sources ten at a time, records size, CRC-32 (when S3 holds one) and what is missing
under the chunk's own KV key (`{job}.chunk.{n}`, written whole, so a rerun just rewrites it),
then adds the chunk to the job's counters in one compare-and-set that also remembers *which*
chunks are counted: a redelivery never counts twice. The update that completes the set names
this chunk `finalize_by`; only that chunk emits `ExportFinalize`, with an id derived from the
job, so a redelivery of it re-sends the same message and the server drops the copy.

Missing sources do not fail the export: they are listed in the manifest.
"""

from __future__ import annotations

import asyncio

import msgspec

from shared import messages as m
from shared.exportplan import ChunkRecord, SourceInfo, chunk_key
from shared.jobs import Job
from shared.runtime import Context, Emit, Reject, Stage

HEAD_BATCH = 10
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


STAGE = Stage(name="chunk", stream="JM_CHUNK", handle=handle, accepts=(m.ChunkRequested,))
