"""transcode: audio and video become web-ready files in S3 (`transcodes/{asset}/{preset}.{ext}`).

Audio -> MP3 + Opus; video -> MP4 (H.264/AAC, faststart, <= 1080p) and a poster frame
(`transcodes/{asset}/poster.jpg`) that goes on to the variant stage for its thumb/display sizes.
The probe, not upload's magic-byte guess, decides what the file is. Progress is written to the
job record as a percent; a stalled ffmpeg is killed and retried, a cancelled job's ffmpeg is
killed and its temp files removed (the runtime cancels this handler; `finally` does the rest).
Deterministic keys and derived message ids make a redelivery overwrite, never duplicate.

An export's "mp3"/"opus" transform arrives here too, one request per item (`data.export` set):
`transcode_file()` makes that one output in the export's own folder (`exportitems.output_key`) and the item is
counted on its chunk's record (shared/exportitems.py) instead of becoming an asset part.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgspec

from shared import exportitems
from shared import messages as m
from shared.jobs import Job
from shared.runtime import Context, Emit, Stage

from . import presets
from .probe import Probe
from .work import (
    Encoded,
    JobPercent,
    Source,
    arrive,
    check_output,
    discard,
    encode,
    forget,
    output_key,
    poster,
    store,
    transcode_file,
    workspace,
)

__all__ = ["STAGE", "handle", "transcode_file"]
T = TypeVar("T")


async def all_or_none(steps: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run steps concurrently; when one fails (or the job is cancelled), stop the others and wait
    until their ffmpeg is killed and reaped before the error propagates (its type intact)."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def handle(event: m.TranscodeRequested, ctx: Context) -> list[Emit]:
    data = event.data
    if data.export is not None:
        return await export_item(data, data.export, ctx)
    deadline = time.monotonic() + ctx.settings.transcode_time_limit
    async with workspace(ctx) as folder, arrive(ctx, data.bucket, data.key, folder) as source:
        facts = source.facts
        chosen = presets.choose(facts.media, data.presets, ctx.settings)
        progress = JobPercent(ctx, data.job, facts.duration * len(chosen))
        seconds_done = [0.0] * len(chosen)
        checked: set[int] = set()
        uploaded: list[str] = []
        reading = [len(chosen) + (facts.video is not None)]  # ffmpeg runs that still read the source
        removing: list[asyncio.Future[None]] = []

        def read() -> None:
            """One ffmpeg that read the source is done; after the last, the source (most of the
            workspace's removal time) is removed in a thread beside the uploads."""
            reading[0] -= 1
            if reading[0] == 0:
                removing.append(asyncio.ensure_future(_discard(source)))

        async def make(n: int, preset: presets.Preset) -> m.OutputFile:
            async def report(seconds: float) -> None:
                seconds_done[n] = seconds
                await progress.at(sum(seconds_done))

            async def check(complaints: list[str]) -> Probe:
                made = await check_output(ctx, out, facts, preset, complaints)
                checked.add(n)
                if len(checked) == len(chosen):  # every encode is done and whole: 100 %, beside the last upload
                    await progress.at(progress.total, force=True)
                return made

            out = os.path.join(folder, f"{preset.name}.{preset.ext}")
            complaints = await encode(ctx, source, facts, preset, out, report, deadline)
            read()
            item = Encoded(preset.name, out, output_key(data.asset, preset.name, preset.ext),
                           preset.content_type, preset.ext)
            return await store(ctx, item, uploaded, check(complaints))

        async def make_poster() -> m.OutputFile:
            frame = os.path.join(folder, "poster.jpg")
            await poster(ctx, source, facts, frame, deadline)
            read()
            item = Encoded("poster", frame, output_key(data.asset, "poster", "jpg"), "image/jpeg", "jpeg")
            return await store(ctx, item, uploaded)

        # The encodes run side by side (audio encoders use one core each, the poster is a single
        # frame; x264 uses every core either way), and each output is uploaded as soon as it is
        # made, while the others still encode. One fails or the job is cancelled: the rest are
        # stopped and what was uploaded is removed. The job record learns what the probe found
        # (its parts) meanwhile, so no record write waits for the last upload.
        aligned = asyncio.ensure_future(_poster_needed(ctx, data.job, facts.media))
        work = [make(n, preset) for n, preset in enumerate(chosen)]
        try:
            outputs = await all_or_none([*work, make_poster()] if facts.video is not None else work)
            needs_poster = await aligned
        except BaseException:
            aligned.cancel()
            await asyncio.gather(aligned, return_exceptions=True)
            await forget(ctx, uploaded)
            raise
        finally:
            await asyncio.gather(*removing, return_exceptions=True)

    emits = [_part(ctx, data, "transcode", outputs, facts.info())]
    if facts.video is not None:
        frame_key = output_key(data.asset, "poster", "jpg")
        request = m.VariantRequested(
            id=m.derived_id(data.job, "poster", data.asset), source=ctx.settings.source, time=m.now(),
            subject=data.job,
            data=m.VariantRequestedData(job=data.job, asset=data.asset, bucket=ctx.settings.bucket, key=frame_key,
                                        part="poster"),
        )
        emits.append(Emit(m.VARIANT, request))
    elif needs_poster:  # upload guessed video, the probe found only sound: nothing to wait for
        emits.append(_part(ctx, data, "poster", [], None))
    return emits


async def _discard(source: Source) -> None:
    await asyncio.wait([source.done])  # all of it has arrived (an encode may end before: ffmpeg's call)
    await asyncio.to_thread(discard, source.path)


async def export_item(data: m.TranscodeRequestedData, ref: m.ExportItemRef, ctx: Context) -> list[Emit]:
    """One item of an export's "mp3"/"opus" transform: one preset, one output, counted on the chunk."""
    preset = (data.presets or ["mp3"])[0]

    async def make() -> tuple[str, str]:
        known = presets.PRESETS.get(preset)  # an unknown one: transcode_file rejects it with the list
        key = exportitems.output_key(data.job, ref, f"{preset}.{known.ext}") if known else None
        output = await transcode_file(ctx, data.key, preset, bucket=data.bucket, key=key)
        return ctx.storage.bucket, output.key

    return await exportitems.run_item(ctx, data.job, ref, make)


def _part(ctx: Context, data: m.TranscodeRequestedData, part: str, outputs: list[m.OutputFile],
          source: m.MediaInfo | None) -> Emit:
    done = m.PartDone(
        id=m.derived_id(data.job, part, data.asset), source=ctx.settings.source, time=m.now(), subject=data.job,
        data=m.PartData(job=data.job, asset=data.asset, part=part, outputs=outputs, source=source),
    )
    return Emit(m.FINALIZE_ASSET, done)


async def _poster_needed(ctx: Context, job_id: str, media: str) -> bool:
    """Make the job's list of parts match what the probe found (upload only saw magic bytes):
    a video needs its poster part, audio does not."""
    def align(job: Job) -> Job:
        if job.final:
            return job
        if media == "video" and "poster" not in job.parts_needed:
            needed = [*job.parts_needed, "poster"]
            return msgspec.structs.replace(job, parts_needed=needed, total=len(needed), media=media)
        return job if job.media == media else msgspec.structs.replace(job, media=media)

    try:
        job = await ctx.jobs.update(job_id, align)
    except KeyError:  # no job record (a direct request): nothing to align
        return False
    return "poster" in job.parts_needed


STAGE = Stage(name="transcode", stream="JM_TRANSCODE", handle=handle, accepts=(m.TranscodeRequested,),
              check=presets.check,
              concurrency=2)  # ffmpeg uses every core; two in flight overlap one's I/O with the other's encode
