"""upload: the pipeline's front door. Validates what producers send and starts the job.

Each request type has its own module; this one only routes.
"""

from __future__ import annotations

from shared import messages as m
from shared.runtime import Context, Emit, Stage

from .asset import start_asset
from .export import cancel_job, start_export


async def handle(event: m.AssetUploaded | m.ExportRequested | m.CancelRequested, ctx: Context) -> list[Emit]:
    match event:
        case m.AssetUploaded():
            return await start_asset(event, ctx)
        case m.ExportRequested():
            return await start_export(event, ctx)
        case m.CancelRequested():
            return await cancel_job(event, ctx)
    return []


STAGE = Stage(
    name="upload", stream="JM_UPLOAD", handle=handle,
    accepts=(m.AssetUploaded, m.ExportRequested, m.CancelRequested),
    reruns=(m.AssetUploaded, m.ExportRequested),  # the same request again re-runs a failed/cancelled job
)
