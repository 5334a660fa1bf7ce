"""Per asset: record a part's outputs; when every needed part is in, the job is ready.

Safe to run twice: merging the same part again changes nothing, and the ready event's id is
derived from the job, so a redelivery re-emits it and the server drops the copy.
"""

from __future__ import annotations

import msgspec

from shared import messages as m
from shared.jobs import Job, Part
from shared.runtime import Context, Emit


async def finalize_part(event: m.PartDone, ctx: Context) -> list[Emit]:
    data = event.data

    def merge(job: Job) -> Job:
        if job.final:
            return job
        parts = {**job.parts, data.part: Part(
            outputs=data.outputs, source=data.source, colours=data.colours, placeholder=data.placeholder,
        )}
        done = sum(1 for name in job.parts_needed if name in parts)
        ready = done >= len(job.parts_needed)
        return msgspec.structs.replace(
            job, parts=parts, done=done, status="ready" if ready else job.status,
            stage="finalize" if ready else job.stage,
        )

    job = await ctx.jobs.update(data.job, merge)
    if job.status != "ready":
        return []
    ready = m.AssetReady(
        id=m.derived_id(job.id, "ready"), source=ctx.settings.source, time=m.now(), subject=job.id,
        data=m.AssetReadyData(
            job=job.id, asset=job.asset or job.id, key=job.source_key or "", media=job.media or "image",  # type: ignore[arg-type]
            outputs=job.outputs,
        ),
    )
    return [Emit(m.EVENTS_ASSET_READY, ready)]
