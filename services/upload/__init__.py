"""upload: the pipeline's front door. Validates what producers send and starts the job.

Each request type has its own module; this one only routes.
"""

from __future__ import annotations

from shared import messages as m
from shared.runtime import Context, Emit, Stage

from .asset import start_asset


async def handle(event: m.AssetUploaded, ctx: Context) -> list[Emit]:
    match event:
        case m.AssetUploaded():
            return await start_asset(event, ctx)
    return []


STAGE = Stage(name="upload", stream="JM_UPLOAD", handle=handle, accepts=(m.AssetUploaded,))
