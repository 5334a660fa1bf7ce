"""finalize (exports): stream every source from S3 into a ZIP and the ZIP straight into S3.

No temporary file and no whole object in memory: stream-zip pulls each source chunk by chunk and
its output goes into a multipart upload. Three things overlap (a plain copy's speed needs all
three): the next sources are read ahead (readahead.py, 8 MiB budget), stream-zip runs in a
writer thread of its own that also hashes (the manifest's SHA-256 per member and SigV4's per
upload part: zipthread.py), and four upload parts are in flight.
Memory stays flat whatever the export size, at about five parts (8 MiB below ~8 GB of archive,
bigger only as S3's 10,000-part limit needs) plus the read-ahead: ~60 MB. Per member:

- sources that do not compress (JPEG, MP4, MP3, ZIP: judged from their first 64 KiB) are stored,
  using the CRC-32 S3 already holds, so nothing is read twice; without one they become level-0
  deflate (stored blocks, CRC computed while streaming) rather than being buffered;
- everything else is deflated at a low level (`JETMEDIA_EXPORT_DEFLATE_LEVEL`, default 2);
- Zip64 only where a member or an offset needs it; names are UTF-8 (stream-zip flags them).

README.txt comes first, manifest.json last (name, source key, size, sha256 of every member,
plus the missing sources), so the sha256s are computed on the way through. An export bigger
than `JETMEDIA_EXPORT_PART_BYTES` becomes numbered parts plus an index.json.

A run killed mid-stream is redone from scratch on redelivery: leftover multipart uploads under
`exports/{job}/` are aborted first and the keys are deterministic, so exactly one archive results.
A cancel (the runtime cancels this task, or the job turns `cancelled` under us) aborts the
upload and deletes any part already written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import stat
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import stream_zip
from botocore.exceptions import ClientError
from stream_zip import (
    NO_COMPRESSION_32,
    NO_COMPRESSION_64,
    ZIP_AUTO,
    Method,
    ZipIntegrityError,
)
from zlib_ng import zlib_ng

from shared import messages as m
from shared.exportplan import (
    ARCHIVES,
    MANIFEST,
    README,
    ChunkRecord,
    SourceInfo,
    Untransformed,
    archive_bound,
    chunk_key,
    compresses,
    part_names,
    plan_runs,
    upload_part_size,
)
from shared.jobs import Job
from shared.malloc import reuse_big_buffers
from shared.runtime import Context, Emit, Reject, Retry, announcements
from shared.storage import Storage

from .readahead import ReadAhead
from .zipthread import Built, Streamed, ZipThread

log = logging.getLogger("jetmedia.finalize.export")

READ_CHUNK = 1024 * 1024  # bytes per S3 read and per stream-zip output chunk
READ_AHEAD_BYTES = 8 * 1024 * 1024  # sources read ahead of the one streaming, at most
PROGRESS_EVERY = 2.0  # seconds between progress updates of the job record (and cancel checks)
MODE = stat.S_IFREG | 0o644
ZIP32_LIMIT = 0xFFFFFFFF

_decoder = msgspec.json.Decoder(ChunkRecord)


reuse_big_buffers()  # gigabytes in 0.25-1 MiB pieces (shared/malloc.py)

# stream-zip's CRC-32 check of every stored member and its deflate run on zlib-ng (SIMD, the
# same formats): CRC-32 0.05 instead of 0.3 s/GB, and level 2 deflates JSON ~1.8x faster than
# stdlib zlib's level 1, to a smaller result. Export CPU is throughput on a machine that also
# runs the S3 server (docs/benchmarks.md). stream-zip calls both through its module's `zlib`.
stream_zip.zlib = zlib_ng  # type: ignore[attr-defined]


class Cancelled(Exception):
    """The job turned `cancelled` while we were streaming (seen at a file boundary)."""


# stream-zip's "upgrade the central directory to Zip64 when it needs it" marker, as ZIP_AUTO gives it
_AUTO_UPGRADE_CENTRAL_DIRECTORY = ZIP_AUTO(0)._get(0, zlib.compressobj)[1]


class StoredAuto(Method):
    """Stored with a known size and CRC-32: Zip32 unless the size or the offset needs Zip64.

    stream-zip's ZIP_AUTO makes that choice for deflated members; this does it for stored ones
    through the same `Method._get(offset, ...)` hook, and like ZIP_AUTO it lets the central
    directory turn Zip64 when it must: NO_COMPRESSION_32 alone forbids that, so the 65,536th
    stored member (70,000 thumbnails) or a Zip32 member ending past 4 GiB (a part bigger than
    4 GiB) raised an overflow error instead of writing the Zip64 end records."""

    def __init__(self, size: int, crc32: int) -> None:
        self.size = size
        self.crc32 = crc32

    def _get(self, offset: int, default_get_compressobj: Any) -> Any:
        method = NO_COMPRESSION_64 if self.size > ZIP32_LIMIT or offset > ZIP32_LIMIT else NO_COMPRESSION_32
        got = method(self.size, self.crc32)._get(offset, default_get_compressobj)
        return (got[0], _AUTO_UPGRADE_CENTRAL_DIRECTORY, *got[2:])


@dataclass(eq=False)
class Member:
    """One source while it streams: what the manifest will say about it."""

    source: SourceInfo
    method: str = "stored"
    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def add(self, piece: bytes) -> None:
        """Called in the writer thread for every piece (hashlib releases the GIL)."""
        self.sha256.update(piece)
        self.size += len(piece)


@dataclass
class Progress:
    files: int = 0
    bytes: int = 0
    last: float = field(default_factory=time.monotonic)


async def finalize_export(event: m.ExportFinalize, ctx: Context) -> list[Emit]:
    job_id = event.data.job
    job = await ctx.jobs.get(job_id)
    if job is None:
        raise Reject(f"export job {job_id!r} has no record")
    if job.final:  # a duplicate finalize (the runtime skips most): its event, if never announced
        return announcements(job, ctx.settings)
    records = await _load_chunks(ctx, job)
    bucket = records[0].bucket if records else ctx.settings.bucket
    missing = [item for record in records for item in record.missing]
    untransformed = [item for record in records for item in record.untransformed]
    # a transform's output may live in another bucket than the sources: resolved here, per source
    found = [s if s.bucket is not None else msgspec.structs.replace(s, bucket=r.bucket)
             for r in records for s in r.found]

    prefix = f"{ARCHIVES}{job_id}/"
    leftovers = await ctx.storage.abort_multipart_uploads(prefix)
    if leftovers:
        log.info("export %s: aborted %d multipart upload(s) of an earlier attempt", job_id, leftovers)
    await ctx.jobs.update(job_id, lambda j: j if j.final else msgspec.structs.replace(
        j, stage="finalize", archived=0, archived_bytes=0))

    runs = plan_runs([s.size for s in found], max_files=len(found) + 1, max_bytes=ctx.settings.export_part_bytes)
    runs = runs or [range(0)]  # every source missing: still one archive with the manifest
    names = part_names(job.archive or f"export-{job_id}", len(runs))
    written: list[m.ExportFile] = []
    progress = Progress()
    try:
        for number, (run, name) in enumerate(zip(runs, names, strict=True), start=1):
            written.append(await write_archive(
                ctx, job, key=prefix + name, name=name, bucket=bucket, sources=[found[i] for i in run],
                missing=missing, part=number, parts=len(runs), progress=progress, untransformed=untransformed,
            ))
        index_key = await _write_index(ctx, job, prefix, written, missing) if len(written) > 1 else None
        return await _ready(ctx, job, written, index_key, missing, progress)
    except (asyncio.CancelledError, Cancelled) as exc:
        await asyncio.shield(_remove(ctx.storage, [f.key for f in written] + [prefix + "index.json"]))
        log.info("export %s: cancelled; removed %d finished part(s)", job_id, len(written))
        if isinstance(exc, asyncio.CancelledError):
            raise
        return []


async def write_archive(
    ctx: Context, job: Job, *, key: str, name: str, bucket: str, sources: list[SourceInfo],
    missing: list[m.ExportItem], part: int, parts: int, progress: Progress,
    untransformed: list[Untransformed] | None = None,
) -> m.ExportFile:
    """One ZIP into one multipart upload; aborted (nothing left behind) if anything goes wrong.

    Three things run at once: the read-ahead GETs of the next sources, the ZIP writer thread
    (hashing, CRC check, deflate, gathering parts), and up to four part uploads. Parts are sized
    for the archive (whose size the chunk records tell: at most the sources plus headers), so a
    big one stays within S3's 10,000 parts."""
    names = sum(len(source.name.encode()) for source in sources)
    part_size = upload_part_size(archive_bound((source.size for source in sources), names))
    fast = ctx.services.fast_s3  # GETs and parts hand-signed: ~2 ms of botocore per request less
    upload = ctx.storage.multipart(key, "application/zip", part_size=part_size, fast=fast)
    ahead = ReadAhead(ctx.storage, [(s.key, s.bucket or bucket, s.size) for s in sources],
                      budget=READ_AHEAD_BYTES, chunk=READ_CHUNK, fast=fast)
    members: list[Member] = []
    modified = job.created.astimezone(UTC)
    level = ctx.settings.export_deflate_level

    def built(data: bytes) -> tuple[Method, bytes]:
        return ZIP_AUTO(len(data), level=level), data

    async def entries() -> AsyncIterator[Streamed | Built]:
        readme = _readme(job, name, part, parts, len(sources)).encode()
        yield Built(README, modified, MODE, lambda: built(readme))
        for source in sources:
            await _boundary(ctx, job.id, progress)
            opened = await _open(ahead.next(), source.bucket or bucket)
            if opened is None:  # deleted since the chunk stage saw it: listed as missing
                missing.append(m.ExportItem(key=source.source or source.key, name=source.name))
                continue
            first, rest = opened
            method, how = choose_method(job.compression, source.size, source.crc32, first, level)
            member = Member(source, method=how)
            members.append(member)
            yield Streamed(source.name, file_date(source.modified, modified), MODE, method,
                           _counted(first, rest, ctx, progress), seen=member.add, tag=member)
            progress.files += 1
        # made in the writer thread once every member before it has been hashed
        yield Built(MANIFEST, modified, MODE, lambda: built(
            _manifest(job, part, parts, members, missing, untransformed or [])))

    # on the hand-signed path the writer thread also hashes each part for SigV4 (zipthread.py)
    hashed = fast is not None and fast.usable
    writer = ZipThread(entries(), chunk=READ_CHUNK, part_size=part_size if hashed else None)
    if hashed:
        upload.part_sha256 = writer.part_sha256
    stream = writer.parts()
    try:
        ahead.start()
        async for piece in stream:
            await upload.write(piece)
            ctx.count_bytes("out", len(piece))
        await upload.complete()
    except ZipIntegrityError as exc:  # size or CRC-32 differ from the HEAD: retrying would not help
        await asyncio.shield(upload.abort())
        changed = writer.current.source.key if isinstance(writer.current, Member) else "?"
        raise Reject(f"source {changed} changed while the export ran ({type(exc).__name__}: its size or "
                     "CRC-32 no longer match what the chunk stage recorded); request the export again") from None
    except BaseException:
        await asyncio.shield(upload.abort())
        raise
    finally:
        with contextlib.suppress(BaseException):
            await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.shield(ahead.close())
    return m.ExportFile(name=name, key=key, bytes=upload.bytes_written, files=len(members))


def choose_method(policy: str, size: int, crc32: int | None, first: bytes, level: int) -> tuple[Method, str]:
    """Store what does not compress (with S3's CRC when there is one), deflate the rest; Zip64
    only where the size or the offset needs it. Returns the method and its manifest label."""
    store = policy == "store" or (policy == "auto" and not compresses(first, level))
    if not store:
        return ZIP_AUTO(size, level=level), "deflated"
    if crc32 is not None:
        return StoredAuto(size, crc32), "stored"
    return ZIP_AUTO(size, level=0), "stored-blocks"  # deflate level 0: no CRC up front, nothing buffered


async def _open(body: AsyncIterator[bytes], bucket: str) -> tuple[bytes, AsyncIterator[bytes]] | None:
    """A source's first piece and the rest; None if it vanished since the chunk stage saw it."""
    try:
        first = await anext(body, b"")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "NoSuchBucket":  # not "missing": the whole export would be an empty archive
            raise Reject(f"source bucket {bucket!r} does not exist") from None
        if code in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    return first, body


async def _counted(first: bytes, rest: AsyncIterator[bytes], ctx: Context,
                  progress: Progress) -> AsyncIterator[bytes]:
    """A source's pieces (about 1 MiB each, gathered by `Storage.iter_bytes`), counted on the loop
    on their way to the writer thread (which hashes them)."""
    try:
        yield _account(first, ctx, progress)
        async for piece in rest:
            yield _account(piece, ctx, progress)
    finally:
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]


def _account(piece: bytes, ctx: Context, progress: Progress) -> bytes:
    progress.bytes += len(piece)
    ctx.count_bytes("in", len(piece))
    ctx.progress()
    return piece


async def _boundary(ctx: Context, job_id: str, progress: Progress) -> None:
    """Between two files: every couple of seconds, publish progress and notice a cancel."""
    if time.monotonic() - progress.last < PROGRESS_EVERY:
        return
    progress.last = time.monotonic()

    def advance(job: Job) -> Job:
        if job.final:
            return job
        return msgspec.structs.replace(job, archived=progress.files, archived_bytes=progress.bytes)

    job = await ctx.jobs.update(job_id, advance)
    if job.status == "cancelled":
        raise Cancelled(job_id)


async def _load_chunks(ctx: Context, job: Job) -> list[ChunkRecord]:
    records: list[ChunkRecord] = []
    for start in range(0, job.chunks, 50):
        raws = await asyncio.gather(*(ctx.jobs.get_raw(chunk_key(job.id, n))
                                      for n in range(start, min(start + 50, job.chunks))))
        for n, raw in enumerate(raws, start=start):
            if raw is None:
                raise Retry(f"chunk {n} of export {job.id} has no record yet")
            records.append(_decoder.decode(raw))
    return records


def _readme(job: Job, name: str, part: int, parts: int, files: int) -> str:
    lines = [
        f"{name}",
        "",
        f"Export {job.id}, made by jetmedia on {job.created:%Y-%m-%d %H:%M} UTC.",
        f"Part {part} of {parts}: {files} file(s)." if parts > 1 else f"{files} file(s).",
        "",
        f"{MANIFEST} lists every file in this archive: its name here, the S3 key it came from,",
        "its size in bytes and its SHA-256, and under \"missing\" the requested objects that did",
        "not exist when the export ran.",
        "Names were made safe to unpack: no absolute paths, no '..', no control characters; a name",
        "taken twice got a number, as in 'photo (1).jpg'.",
    ]
    if job.transform != "original":
        lines += ["", f"Every file was converted ({job.transform!r}) and named with its new extension; the",
                  f"ones that could not be are listed under \"untransformed\" in {MANIFEST}, with the reason."]
    if parts > 1:
        lines.append(f"The other parts are listed in index.json next to this archive in S3 ({parts} parts).")
    return "\n".join(lines) + "\n"


def _manifest(job: Job, part: int, parts: int, members: list[Member], missing: list[m.ExportItem],
              untransformed: list[Untransformed]) -> bytes:
    document = {
        "job": job.id,
        "archive": job.archive,
        "part": part,
        "parts": parts,
        "created": job.created.isoformat(),
        "files": [
            _entry(mb) for mb in members
        ],
        "missing": [{"key": item.key, "name": item.name} for item in missing],
    }
    if job.transform != "original":
        document["transform"] = job.transform
        document["untransformed"] = [{"key": u.key, "name": u.name, "reason": u.reason} for u in untransformed]
    return msgspec.json.format(msgspec.json.encode(document), indent=1)


def _entry(member: Member) -> dict[str, Any]:
    source = member.source
    entry: dict[str, Any] = {"name": source.name, "key": source.source or source.key, "size": member.size,
                             "sha256": member.sha256.hexdigest(), "compression": member.method}
    if source.source is not None:  # a transform's output: the requested key above, the output here
        entry["output"] = source.key
    return entry


async def _write_index(ctx: Context, job: Job, prefix: str, parts: list[m.ExportFile],
                       missing: list[m.ExportItem]) -> str:
    key = prefix + "index.json"
    urls = [await ctx.storage.presign(p.key, filename=p.name) for p in parts]
    document = {
        "job": job.id, "archive": job.archive, "parts": [
            {**msgspec.structs.asdict(p), "url": url} for p, url in zip(parts, urls, strict=True)
        ],
        "missing": [item.key for item in missing],
    }
    await ctx.storage.put_bytes(key, msgspec.json.format(msgspec.json.encode(document), indent=1),
                                content_type="application/json")
    return key


async def _ready(ctx: Context, job: Job, written: list[m.ExportFile], index_key: str | None,
                 missing: list[m.ExportItem], progress: Progress) -> list[Emit]:
    parts = [msgspec.structs.replace(p, url=await ctx.storage.presign(p.key, filename=p.name)) for p in written]
    url = await ctx.storage.presign(index_key) if index_key else parts[0].url
    assert url is not None
    expires = datetime.now(UTC) + timedelta(seconds=ctx.settings.url_ttl)
    files = sum(p.files for p in parts)

    def ready(current: Job) -> Job:
        if current.final:
            return current
        return msgspec.structs.replace(
            current, status="ready", stage="finalize", url=url, expires=expires, exports=parts,
            archived=files, archived_bytes=progress.bytes, missing=[i.key for i in missing][:50],
            missing_count=len(missing),
        )

    done = await ctx.jobs.update(job.id, ready)
    if done.status == "cancelled":
        raise Cancelled(job.id)
    # the event is derived from the record (the outbox): whichever run finished first, a
    # redelivery after a failed publish, all send this same event, once
    return announcements(done, ctx.settings)


async def _remove(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        with contextlib.suppress(Exception):
            await storage.delete(key)


ZIP_DATES = (datetime(1980, 1, 1, tzinfo=UTC), datetime(2107, 12, 31, tzinfo=UTC))  # what a ZIP can say


def file_date(source: datetime | None, fallback: datetime) -> datetime:
    """A member's date: its source's Last-Modified, so unpacked files keep their dates (the
    export's own date for README, manifest and a source S3 gave none), within ZIP's range."""
    if source is None:
        return fallback
    return min(max(source.astimezone(UTC), ZIP_DATES[0]), ZIP_DATES[1])
