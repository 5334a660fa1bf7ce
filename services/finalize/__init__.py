"""finalize: merges the parts of a job as they arrive, in any order, and announces it ready;
for an export, streams the archive once every chunk is checked."""

from __future__ import annotations

from shared import messages as m
from shared.runtime import Context, Emit, Stage

from .asset import finalize_part
from .export import finalize_export


async def handle(event: m.PartDone | m.ExportFinalize, ctx: Context) -> list[Emit]:
    match event:
        case m.PartDone():
            return await finalize_part(event, ctx)
        case m.ExportFinalize():
            return await finalize_export(event, ctx)
    return []


STAGE = Stage(name="finalize", stream="JM_FINALIZE", handle=handle, accepts=(m.PartDone, m.ExportFinalize))
