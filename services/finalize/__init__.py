"""finalize: merges the parts of a job as they arrive, in any order, and announces it ready."""

from __future__ import annotations

from shared import messages as m
from shared.runtime import Context, Emit, Stage

from .asset import finalize_part


async def handle(event: m.PartDone, ctx: Context) -> list[Emit]:
    match event:
        case m.PartDone():
            return await finalize_part(event, ctx)
    return []


STAGE = Stage(name="finalize", stream="JM_FINALIZE", handle=handle, accepts=(m.PartDone,))
