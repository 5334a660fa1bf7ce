"""variant: an image becomes web-ready variants in S3 (`variants/{asset}/{preset}.{ext}`), and the
facts a page needs (sizes, colours, a ThumbHash placeholder) go to finalize in the part record.

Also makes a video's poster frame web-ready: the transcode stage sends it here with part="poster".
Deterministic keys: a redelivered message overwrites, never duplicates. Everything that can never
succeed (missing, empty, too big, not an image, corrupt, over a pixel or frame limit, unknown
preset) is a `Reject` with the reason, so the job fails once, with that reason, and is dead-lettered.

An export's "display" transform arrives here too, one request per item (`data.export` set): the
display variant goes to the export's own folder (`exportitems.output_key`: a repeat overwrites it)
and the item is counted on its chunk's record (shared/exportitems.py); a `Reject` there lists the
item in the export's manifest with the reason instead of failing the export.
"""

from __future__ import annotations

import asyncio
import functools

from botocore.exceptions import ClientError

from shared import exportitems
from shared import messages as m
from shared.config import Settings
from shared.runtime import Context, Emit, Reject, Stage
from shared.sources import explain_failed_get

from . import presets
from .images import Encoded, Limits, render


@functools.lru_cache(maxsize=4)
def configured_presets(spec: str) -> tuple[presets.Preset, ...]:
    return presets.parse(spec)


def check_settings(settings: Settings) -> None:
    configured_presets(settings.variant_presets)  # raises PresetError (a ValueError) with the reason


def limits_of(settings: Settings) -> Limits:
    return Limits(max_pixels=settings.max_image_pixels, max_frames=settings.max_image_frames)


def output_key(asset: str, preset: presets.Preset) -> str:
    return f"variants/{asset}/{preset.name}.{preset.extension}"


async def fetch(ctx: Context, bucket: str, key: str) -> bytes:
    """The source in one request. A ranged GET of at most limit + 1 bytes tells "too big" without
    downloading more than the limit, and saves a HEAD round trip per image (through the local S3
    endpoint a request costs ~45 ms of latency, as much as the WebP encode). Sent on the fast
    path (shared/fasts3.py); only when that does not succeed does botocore repeat it, and only
    when its GET fails does a HEAD tell missing from empty from transient."""
    where = f"s3://{bucket}/{key}"
    limit = min(ctx.settings.max_image_bytes, ctx.settings.max_source_bytes)
    got = await ctx.services.fast_s3.get(bucket, key, first=limit + 1)
    try:
        source = got[0] if got is not None else await ctx.storage.get_bytes(key, bucket, first=limit + 1)
    except ClientError as exc:
        await explain_failed_get(ctx, exc, bucket, key)
    if not source:
        raise Reject(f"source object {where} is empty (0 bytes)")
    if len(source) > limit:
        raise Reject(f"source image is over the limit of {limit} bytes")
    return source


async def put(ctx: Context, key: str, data: bytes, content_type: str) -> None:
    await ctx.storage.put_bytes(key, data, content_type, fast=ctx.services.fast_s3)


async def make_variants(event: m.VariantRequested, ctx: Context) -> list[Emit]:
    data = event.data
    if data.export is not None:
        return await export_item(data, data.export, ctx)
    try:
        chosen = presets.select(configured_presets(ctx.settings.variant_presets), data.presets)
    except KeyError as exc:
        raise Reject(str(exc.args[0])) from None

    source = await fetch(ctx, data.bucket, data.key)
    ctx.count_bytes("in", len(source))
    ctx.progress()

    rendered = await ctx.run_cpu(render, source, chosen, limits_of(ctx.settings), ctx.settings.vips_threads)
    size = len(source)
    del source
    ctx.progress()

    async def store(variant: Encoded) -> m.OutputFile:
        key = output_key(data.asset, variant.preset)
        await put(ctx, key, variant.data, variant.preset.content_type)
        ctx.count_bytes("out", len(variant.data))
        return m.OutputFile(
            preset=variant.preset.name, key=key, format=variant.preset.format, bytes=len(variant.data),
            width=variant.width, height=variant.height,
        )

    outputs = await asyncio.gather(*(store(v) for v in rendered.variants))
    src = rendered.source
    part = m.PartDone(
        id=m.derived_id(data.job, data.part, data.asset), source=ctx.settings.source, time=m.now(), subject=data.job,
        data=m.PartData(
            job=data.job, asset=data.asset, part=data.part, outputs=list(outputs),
            source=m.MediaInfo(format=src.format, width=src.width, height=src.height, bytes=size),
            colours=rendered.colours, placeholder=rendered.placeholder,
        ),
    )
    return [Emit(m.FINALIZE_ASSET, part)]


def export_preset(settings: Settings, name: str) -> presets.Preset:
    """The configured preset of that name, else the built-in one (an export's "display" works
    even where the asset pipeline was configured without it)."""
    for preset in (*configured_presets(settings.variant_presets), *presets.BUILTIN):
        if preset.name == name:
            return preset
    raise Reject(f"unknown variant preset {name!r} for an export transform")


async def export_item(data: m.VariantRequestedData, ref: m.ExportItemRef, ctx: Context) -> list[Emit]:
    """One item of an export's "display" transform: one variant, counted on the chunk."""
    preset = export_preset(ctx.settings, (data.presets or ["display"])[0])

    async def make() -> tuple[str, str]:
        source = await fetch(ctx, data.bucket, data.key)
        ctx.count_bytes("in", len(source))
        rendered = await ctx.run_cpu(render, source, (preset,), limits_of(ctx.settings), ctx.settings.vips_threads)
        [variant] = rendered.variants
        key = exportitems.output_key(data.job, ref, f"{preset.name}.{preset.extension}")
        await put(ctx, key, variant.data, preset.content_type)
        ctx.count_bytes("out", len(variant.data))
        return ctx.storage.bucket, key

    return await exportitems.run_item(ctx, data.job, ref, make)


# 8 in flight on a 2-thread CPU pool: S3 round trips (~45 ms each on a local endpoint) overlap
# with renders; memory stays at ≤ 8 sources plus one decode per CPU thread (bench/variant.py).
STAGE = Stage(name="variant", stream="JM_VARIANT", handle=make_variants, accepts=(m.VariantRequested,),
              concurrency=8, check=check_settings)
