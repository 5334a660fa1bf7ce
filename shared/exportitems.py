"""Fan-in of an export's per-item transforms: which items of a chunk are done, counted once.

An export with a transform ("mp3", "opus", "display") is not transformed inside the chunk stage:
chunk HEADs the sources, writes the chunk's *items record* (`{job}.chunk.{n}.items`: the found
sources in order, the missing ones, the results so far) and sends one request per found source to
the transcode or variant stage (`ExportItemRef` says export/chunk/index). That stage makes the
output at its deterministic key and calls `run_item`, which adds the item's result to the record
in one compare-and-set that names the item by its index: a redelivered item (its worker was killed
after the write) finds its index there and counts nothing twice. The write that completes the set
turns the record into the chunk record finalize reads (`{job}.chunk.{n}`, the same `ChunkRecord`
as for a chunk without transform), counts the chunk on the job (`count_chunk`, redelivery-safe by
`chunks_counted`) and removes the items record; the chunk whose count completes the job emits
`ExportFinalize` with an id derived from the job, so repeats are dropped by the server.

A crash anywhere in that sequence is repaired by the redelivery: a complete record is completed
again (every step is idempotent), and once the record is gone the chunk is counted, so the item
only re-sends finalize if its chunk is the one that finalizes.

A source the transform cannot apply to (the stage raises `Reject`: an image under "mp3", a corrupt
file) is a result too, `Untransformed` with the reason, listed in the manifest; it never fails the
export. Cancelling: the runtime skips items of a cancelled export; the items in flight are
cancelled, and each removes every output the export's records list (`remove_outputs`), its own too.

Shared by chunk, transcode and variant, so that no stage imports another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from msgspec import Struct
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from . import messages as m
from .exportplan import ARCHIVES, ChunkRecord, SourceInfo, Untransformed, chunk_key
from .jobs import Job
from .runtime import Context, Emit, Reject, Retry

log = logging.getLogger("jetmedia.exportitems")

MISSING_IN_RECORD = 50  # the job record keeps the first few missing keys; the manifest has them all


class ItemDone(Struct, kw_only=True, frozen=True):
    """One item's result: its output, or why the transform could not apply."""

    index: int
    output: SourceInfo | None = None  # `key`: the output, `source`: the requested key, `name`: in the archive
    untransformed: Untransformed | None = None


class ChunkItems(Struct, kw_only=True, frozen=True):
    """A chunk whose items are out at the stages (`{job}.chunk.{n}.items`)."""

    chunk: int
    bucket: str
    attempt: int = 1  # the export attempt that sent the items
    items: int  # every item of the chunk, missing ones included (the job's `done` grows by this)
    sources: list[SourceInfo]  # the found sources, in archive order; item i is sources[i]
    missing: list[m.ExportItem] = []
    done: list[ItemDone] = []

    @property
    def complete(self) -> bool:
        return len(self.done) >= len(self.sources)

    def done_indexes(self) -> set[int]:
        return {d.index for d in self.done}

    def record(self) -> ChunkRecord:
        """The chunk record finalize reads: outputs in the sources' order, then what failed."""
        results = sorted(self.done, key=lambda d: d.index)
        return ChunkRecord(
            chunk=self.chunk, bucket=self.bucket, missing=self.missing,
            found=[d.output for d in results if d.output is not None],
            untransformed=[d.untransformed for d in results if d.untransformed is not None],
        )


def items_key(job: str, n: int) -> str:
    return f"{chunk_key(job, n)}.items"


def outputs_folder(job: str) -> str:
    """`exports/{job}/items/`: the export's transform outputs, until its archive holds them (the
    cleanup sweep deletes the folder once the job is ready, and everything once it ends otherwise)."""
    return f"{ARCHIVES}{job}/items/"


def output_key(job: str, ref: m.ExportItemRef, filename: str) -> str:
    """Where an item's transform output goes: in its own export's folder, never at a key another
    export or an asset could share (a cancel removes what its export made, and would take the
    other's output with it; an asset id may be anything), and per attempt (a cancelled attempt's
    items in flight remove their outputs while a re-run writes its own). Deterministic: a
    redelivered item overwrites its output."""
    return f"{outputs_folder(job)}{ref.attempt}/{ref.chunk}-{ref.index}/{filename}"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ChunkItems)
_record_decoder = msgspec.json.Decoder(ChunkRecord)


async def _load(ctx: Context, key: str) -> tuple[ChunkItems, int] | None:
    try:
        entry = await ctx.jobs.kv.get(key)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    return _decoder.decode(entry.value), entry.revision or 0


async def _update(ctx: Context, key: str, change: Callable[[ChunkItems | None], ChunkItems | None],
                  attempts: int = 1000) -> ChunkItems | None:
    """Compare-and-set on an items record (`change` returns what to store; the same object or
    None: leave it). Returns the record as stored afterwards (None: there is none)."""
    for _ in range(attempts):
        loaded = await _load(ctx, key)
        current, revision = loaded if loaded is not None else (None, 0)
        changed = change(current)
        if changed is None or changed is current:
            return current
        try:
            if loaded is None:
                await ctx.jobs.kv.create(key, _encoder.encode(changed))
            else:
                await ctx.jobs.kv.update(key, _encoder.encode(changed), last=revision)
            return changed
        except KeyWrongLastSequenceError:
            await asyncio.sleep(0.005)
    raise RuntimeError(f"{key}: gave up after {attempts} conflicting updates")


# --- the chunk's side ---------------------------------------------------------------------


async def send_out(ctx: Context, job_id: str, record: ChunkRecord, items: int) -> ChunkItems | None:
    """The chunk's items record for this attempt: the one already stored (a redelivered chunk
    re-sends the same items), else a new one from `record`. None: the chunk is already complete
    and counted (its items record was removed); nothing to send."""
    key = items_key(job_id, record.chunk)
    loaded = await _load(ctx, key)  # before the job: a record removed after this read was counted first
    if loaded is not None and loaded[0].attempt == ctx.attempt:
        return loaded[0]
    job = await ctx.jobs.get(job_id)
    if loaded is None and job is not None and job.attempt == ctx.attempt and record.chunk in job.chunks_counted:
        return None
    fresh = ChunkItems(chunk=record.chunk, bucket=record.bucket, attempt=ctx.attempt, items=items,
                       sources=record.found, missing=record.missing)

    def start(current: ChunkItems | None) -> ChunkItems | None:
        if current is not None and current.attempt == ctx.attempt:
            return current  # another delivery of this chunk got there first
        return fresh

    return await _update(ctx, key, start)


async def count_chunk(ctx: Context, job_id: str, record: ChunkRecord, items: int) -> list[Emit]:
    """Add a finished chunk to the job's counters in one compare-and-set that also remembers which
    chunks are counted (a repeat counts nothing). The update that completes the set names this
    chunk `finalize_by`; only it emits `ExportFinalize`, with an id derived from the job."""
    size = sum(source.size for source in record.found)
    missing = [item.key for item in record.missing]

    def count(current: Job) -> Job:
        if current.final or record.chunk in current.chunks_counted:
            return current
        counted = sorted([*current.chunks_counted, record.chunk])
        complete = len(counted) >= current.chunks
        return msgspec.structs.replace(
            current, chunks_counted=counted, done=current.done + items, bytes=current.bytes + size,
            missing=[*current.missing, *missing][:MISSING_IN_RECORD],
            missing_count=current.missing_count + len(missing),
            untransformed_count=current.untransformed_count + len(record.untransformed),
            finalize_by=record.chunk if complete else None, stage="finalize" if complete else "chunk",
        )

    job = await ctx.jobs.update(job_id, count)
    return finalize_if_mine(ctx, job, record.chunk)


def finalize_if_mine(ctx: Context, job: Job, chunk: int) -> list[Emit]:
    if job.final or job.finalize_by != chunk:
        return []
    finalize = m.ExportFinalize(
        id=m.derived_id(job.id, "finalize-export"), source=ctx.settings.source, time=m.now(), subject=job.id,
        data=m.ExportFinalizeData(job=job.id, chunks=job.chunks),
    )
    return [Emit(m.FINALIZE_EXPORT, finalize)]


# --- the stage's side ---------------------------------------------------------------------

Make = Callable[[], Awaitable[tuple[str, str]]]  # makes the output; returns where it is (bucket, key)


async def run_item(ctx: Context, job_id: str, ref: m.ExportItemRef, make: Make) -> list[Emit]:
    """One item of an export's transform, from the stage that can make it: `make()` writes the
    output (or raises `Reject`: the transform cannot apply), then the result is counted."""
    key = items_key(job_id, ref.chunk)
    loaded = await _load(ctx, key)
    if loaded is None or loaded[0].attempt != ref.attempt:  # chunk done and tidied, or an older attempt's item
        job = await ctx.jobs.get(job_id)
        if loaded is None and job is not None and job.attempt == ref.attempt:
            return finalize_if_mine(ctx, job, ref.chunk)  # a repeat of the completing item: finalize may be unsent
        return []
    items = loaded[0]
    if ref.index in items.done_indexes():  # redelivered after it was counted: no second conversion
        return await finish(ctx, job_id, items) if items.complete else []
    if not 0 <= ref.index < len(items.sources):
        raise Reject(f"export item {ref.index} of chunk {ref.chunk} does not exist")
    source = items.sources[ref.index]
    made: list[tuple[str, str]] = []
    try:
        try:
            bucket, out = await make()
        except Reject as exc:
            result = ItemDone(index=ref.index, untransformed=Untransformed(key=source.key, name=source.name,
                                                                           reason=str(exc)))
        else:
            made.append((bucket, out))
            info = await ctx.storage.head(out, bucket)
            if info is None:
                raise Retry(f"transform output s3://{bucket}/{out} vanished right after it was written")
            result = ItemDone(index=ref.index, output=SourceInfo(
                key=out, name=source.name, size=info.size, crc32=info.crc32, etag=info.etag,
                bucket=None if bucket == items.bucket else bucket, source=source.key, modified=source.modified,
            ))
        ctx.progress()
        return await _report(ctx, job_id, ref, result)
    except asyncio.CancelledError:
        await asyncio.shield(_if_cancelled(ctx, job_id, made))
        raise


async def _report(ctx: Context, job_id: str, ref: m.ExportItemRef, result: ItemDone) -> list[Emit]:
    def add(current: ChunkItems | None) -> ChunkItems | None:
        if current is None or current.attempt != ref.attempt or result.index in current.done_indexes():
            return current
        return msgspec.structs.replace(current, done=[*current.done, result])

    items = await _update(ctx, items_key(job_id, ref.chunk), add)
    job = await ctx.jobs.get(job_id)
    if job is not None and job.status == "cancelled":  # cancelled while this item ran: leave nothing
        await remove_outputs(ctx, job)
        return []
    if items is None or items.attempt != ref.attempt:
        return []
    return await finish(ctx, job_id, items) if items.complete else []


async def finish(ctx: Context, job_id: str, items: ChunkItems) -> list[Emit]:
    """Every item of the chunk is in: write the chunk record, count the chunk, tidy up."""
    record = items.record()
    await ctx.jobs.put_raw(chunk_key(job_id, items.chunk), _encoder.encode(record))
    emits = await count_chunk(ctx, job_id, record, items.items)
    with contextlib.suppress(Exception):  # left behind, it only costs space: a repeat finds it complete
        await ctx.jobs.kv.delete(items_key(job_id, items.chunk))
    return emits


async def _if_cancelled(ctx: Context, job_id: str, made: list[tuple[str, str]]) -> None:
    """The handler was cancelled: by the export's cancel (remove everything it made), or by a
    shutdown (leave it: the redelivered item overwrites its own output)."""
    with contextlib.suppress(Exception):
        job = await ctx.jobs.get(job_id)
        if job is not None and job.status == "cancelled":
            await remove_outputs(ctx, job, made)


async def remove_outputs(ctx: Context, job: Job, also: Sequence[tuple[str, str]] = ()) -> None:
    """Delete every transform output the export's records list (never a source: only entries
    that name the `source` they were made from)."""
    objects = set(also)
    for n in range(job.chunks):
        loaded = await _load(ctx, items_key(job.id, n))
        if loaded is not None:
            objects |= {(d.output.bucket or loaded[0].bucket, d.output.key) for d in loaded[0].done if d.output}
        raw = await ctx.jobs.get_raw(chunk_key(job.id, n))
        if raw is not None:
            with contextlib.suppress(msgspec.MsgspecError):
                record = _record_decoder.decode(raw)
                objects |= {(s.bucket or record.bucket, s.key) for s in record.found if s.source is not None}
    for bucket, key in sorted(objects):
        with contextlib.suppress(Exception):
            await ctx.storage.client.delete_object(Bucket=bucket, Key=key)
    if objects:
        log.info("export %s: cancelled; removed %d transform output(s)", job.id, len(objects))
