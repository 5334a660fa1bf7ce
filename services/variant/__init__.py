"""variant: an image becomes web-ready variants in S3 (`variants/{asset}/{preset}.{ext}`).

Deterministic keys: a redelivered message overwrites, never duplicates.
"""

from __future__ import annotations

from shared import messages as m
from shared.runtime import Context, Emit, Reject, Stage

from .images import render


async def handle(event: m.VariantRequested, ctx: Context) -> list[Emit]:
    data = event.data
    info = await ctx.storage.head(data.key, data.bucket)
    if info is None:
        raise Reject(f"source object s3://{data.bucket}/{data.key} does not exist")
    if info.size > ctx.settings.max_source_bytes:
        raise Reject(f"source is {info.size} bytes, over the limit of {ctx.settings.max_source_bytes}")
    source = await ctx.storage.get_bytes(data.key, data.bucket)
    ctx.count_bytes("in", len(source))
    rendered = await ctx.run_cpu(render, source)
    outputs = []
    for variant in rendered.variants:
        key = f"variants/{data.asset}/{variant.preset.name}.{variant.preset.format}"
        await ctx.storage.put_bytes(key, variant.data, content_type=f"image/{variant.preset.format}")
        ctx.count_bytes("out", len(variant.data))
        outputs.append(m.OutputFile(
            preset=variant.preset.name, key=key, format=variant.preset.format, bytes=len(variant.data),
            width=variant.width, height=variant.height,
        ))
    part = m.PartDone(
        id=m.derived_id(data.job, data.part, data.asset), source=ctx.settings.source, time=m.now(), subject=data.job,
        data=m.PartData(
            job=data.job, asset=data.asset, part=data.part, outputs=outputs,
            source=m.MediaInfo(format=rendered.source_format, width=rendered.source_width,
                               height=rendered.source_height, bytes=info.size),
        ),
    )
    return [Emit(m.FINALIZE_ASSET, part)]


STAGE = Stage(name="variant", stream="JM_VARIANT", handle=handle, accepts=(m.VariantRequested,))
