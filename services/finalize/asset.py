"""Per asset: record a part's outputs; when every needed part is in, the job is ready.

Safe to run twice: merging the same part again changes nothing. The ready event is derived from
the record and sent through the outbox (shared/outbox.py): published, then marked on the record,
so a redelivery publishes it only while it is not marked, however late the redelivery comes.
"""

from __future__ import annotations

import msgspec

from shared import messages as m
from shared.jobs import Job, Part
from shared.runtime import Context, Emit, announcements


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

    job = await ctx.jobs.update(data.job, merge)  # UnknownJob (permanent) for a job with no record
    return announcements(job, ctx.settings)
