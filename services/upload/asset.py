"""upload (assets): an asset landed in S3 — check it, decide what it is from its bytes, start the job.

Creates the job record first, so even a rejected upload leaves a `failed` job with the reason.
The same request again (a new message, e.g. after the source was uploaded) for a failed or
cancelled job starts its next attempt (`JobStore.start`).
Routes images to `variant`; audio and video to `transcode` (video also gets a poster `variant`
from the transcode stage).
"""

from __future__ import annotations

import msgspec
from botocore.exceptions import ClientError

from shared import messages as m
from shared.jobs import Job, new_job
from shared.runtime import Context, Emit, Reject
from shared.sniff import SNIFF_BYTES, rejection, sniff
from shared.sources import explain_failed_get

PARTS_BY_MEDIA = {"image": ["variant"], "audio": ["transcode"], "video": ["transcode", "poster"]}


async def start_asset(event: m.AssetUploaded, ctx: Context) -> list[Emit]:
    data = event.data
    job_id = m.job_of(event)
    assert job_id is not None
    asset = data.asset_id or job_id
    bucket = data.bucket or ctx.settings.bucket
    job, _started = await ctx.jobs.start(
        new_job(job_id, "asset", status="running", stage="upload", source_key=data.key, asset=asset,
                callback_url=data.callback_url),
        ctx.stream_seq,
    )
    if job.final:
        return []  # a replay of a job that already ended: nothing to do
    ctx.attempt = job.attempt  # a re-run's messages must not be taken for the first attempt's
    if data.callback_url and (problem := m.callback_problem(data.callback_url)):
        raise Reject(problem)

    head, size = await first_bytes(ctx, bucket, data.key)
    if size > ctx.settings.max_source_bytes:
        raise Reject(f"source is {size} bytes, over the limit of {ctx.settings.max_source_bytes}")
    kind = sniff(head)
    if kind is None:
        raise Reject(rejection(head, f"s3://{bucket}/{data.key}"))
    parts = PARTS_BY_MEDIA[kind.media]

    def route(current: Job) -> Job:
        return msgspec.structs.replace(
            current, media=kind.media, parts_needed=parts, total=len(parts), bytes=size,
            stage="variant" if kind.media == "image" else "transcode",
        )

    await ctx.jobs.update(job_id, route)
    if kind.media == "image":
        request = m.VariantRequested(
            id=m.derived_id(job_id, "variant", asset), source=ctx.settings.source, time=m.now(), subject=job_id,
            data=m.VariantRequestedData(job=job_id, asset=asset, bucket=bucket, key=data.key, presets=data.presets),
        )
        return [Emit(m.VARIANT, request)]
    transcode = m.TranscodeRequested(
        id=m.derived_id(job_id, "transcode", asset), source=ctx.settings.source, time=m.now(), subject=job_id,
        data=m.TranscodeRequestedData(job=job_id, asset=asset, bucket=bucket, key=data.key,
                                      media="video" if kind.media == "video" else "audio"),
    )
    return [Emit(m.TRANSCODE, transcode)]



async def first_bytes(ctx: Context, bucket: str, key: str) -> tuple[bytes, int]:
    """The object's first SNIFF_BYTES and its size, from one ranged GET (the size is in its
    Content-Range). A HEAD before the GET cost a request per upload: ~1 ms of this process's
    event loop, ~0.5 ms of the S3 server and a round trip before the variant could start
    (bench/variant.py). Only when the GET fails does a HEAD tell missing from empty (S3 answers
    a range of an empty object with 416) from anything else. The GET goes on the fast path
    (shared/fasts3.py: ~0.6 ms of the event loop instead of ~2), botocore repeats it when that
    does not succeed."""
    where = f"s3://{bucket}/{key}"
    got = await ctx.services.fast_s3.get(bucket, key, first=SNIFF_BYTES)
    if got is not None:
        head, content_range = got
    else:
        try:
            resp = await ctx.storage.client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{SNIFF_BYTES - 1}")
            async with resp["Body"] as body:
                head = await body.read()
        except ClientError as exc:
            await explain_failed_get(ctx, exc, bucket, key)
        content_range = resp.get("ContentRange")
    size = total_size(content_range, len(head))
    if size is None:  # a total the server did not know: ask for it
        info = await ctx.storage.head(key, bucket)
        if info is None:
            raise Reject(f"source object {where} does not exist")
        size = info.size
    if size == 0:
        raise Reject(f"source object {where} is empty (0 bytes)")
    return head[:SNIFF_BYTES], size


def total_size(content_range: str | None, received: int) -> int | None:
    """The object's size from a ranged GET: `bytes 0-255/2400000` -> 2400000; no Content-Range
    means the server sent the whole object (it ignored the range); `*` (unknown total) -> None."""
    if not content_range:
        return received
    total = content_range.rpartition("/")[2]
    return int(total) if total.isdigit() else None
