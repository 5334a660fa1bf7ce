"""Dead letters, acted on: replay (re-publish the original, remove the letter), purge, retry a job.

The CLI (`jetmedia dlq replay|purge`, `jetmedia retry JOB`) calls these; they are plain functions
over a Services so tests and scripts can too.

Replaying twice runs nothing twice. The original goes back with `Nats-Msg-Id: replay:{letter id}`,
so two replays of one letter within the duplicate window are one message; the letter is removed
once the original is out, so a later replay finds nothing. A replayed producer request is a new
message to the upload stage, which is what re-runs a failed or cancelled job (a new attempt,
shared/jobs.py `JobStore.start`); a replayed stage message (variant, transcode, ...) first reopens
its job (`JobStore.reopen`: running again, attempt + 1, finished parts kept), else the runtime would
skip it as work of a job that ended. A job that has since become ready skips the replay as it
skips any late message. Letters of refused messages (not JSON, not the schema) are not replayed:
the same bytes would be refused again; fix the producer, then purge them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from . import bus
from . import messages as m
from .runtime import Services

STREAM = "JM_DLQ"
NO_MESSAGE_FOUND = 10057  # what deleting a message that is gone answers
REFUSED = "Refused"  # error_class of a message that did not decode (shared/runtime.py)


@dataclass(frozen=True)
class Which:
    """Which letters: every one, or those of a stage, a job, newer than a time (all must match)."""

    stage: str | None = None
    job: str | None = None
    since: datetime | None = None

    def matches(self, letter: m.DeadLetter) -> bool:
        return ((self.stage is None or letter.data.stage == self.stage)
                and (self.job is None or letter.data.job == self.job or letter.subject == self.job)
                and (self.since is None or (letter.time is not None and letter.time >= self.since)))


@dataclass(frozen=True)
class Stored:
    seq: int  # its sequence in JM_DLQ (what removing it takes)
    letter: m.DeadLetter


@dataclass
class Replayed:
    replayed: list[str] = field(default_factory=list)  # letter ids whose original went back
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (letter id, why not)


async def letters(services: Services, which: Which = Which()) -> list[Stored]:
    """The letters JM_DLQ holds now that match, oldest first (read without consuming)."""
    js = services.js
    info = await js.stream_info(STREAM)
    if not info.state.messages:
        return []
    subject = f"{m.DLQ_PREFIX}.{which.stage}" if which.stage else f"{m.DLQ_PREFIX}.>"
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0)
    sub = await js.pull_subscribe(subject, stream=STREAM, config=config)
    found: list[Stored] = []
    try:
        while True:
            try:
                batch = await sub.fetch(500, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for msg in batch:
                await msg.ack()
                try:
                    event = m.decode(msg.data)
                except Exception:  # not a letter (someone published here by hand): leave it
                    continue
                if isinstance(event, m.DeadLetter) and which.matches(event):
                    found.append(Stored(msg.metadata.sequence.stream, event))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found


async def replay(services: Services, which: Which = Which()) -> Replayed:
    """Re-publish the originals of the matching letters and remove the letters."""
    return await replay_letters(services, await letters(services, which))


async def replay_letters(services: Services, stored: Iterable[Stored]) -> Replayed:
    done = Replayed()
    for item in stored:
        why_not = await _replay_one(services, item)
        if why_not is None:
            done.replayed.append(item.letter.id)
        else:
            done.skipped.append((item.letter.id, why_not))
    return done


async def _replay_one(services: Services, item: Stored) -> str | None:
    data = item.letter.data
    if data.original_truncated:
        return "the letter holds only the first bytes of the original"
    if data.error_class == REFUSED:
        return "a refused message (not JSON or not the schema): the same bytes would be refused again"
    if not data.original_subject:
        return "the letter does not say where the original was published"
    job = data.job or item.letter.subject
    if job and data.original_subject not in m.REQUEST_SUBJECTS and await services.jobs.get(job) is not None:
        await services.jobs.reopen(job)  # a stage's message: its job must be running to take it
    await services.js.publish(data.original_subject, data.original_payload(),
                              headers={bus.MSG_ID: f"replay:{item.letter.id}"})
    await _remove(services, item.seq)
    return None


async def purge(services: Services, which: Which = Which()) -> int:
    """Remove the matching letters; returns how many."""
    removed = 0
    for item in await letters(services, which):
        removed += await _remove(services, item.seq)
    return removed


async def retry(services: Services, job: str) -> Replayed:
    """Run a failed or cancelled job again from its dead letters. LookupError when there are none
    (then: publish the producer's request again as a new message, README "Running a job again")."""
    found = await letters(services, Which(job=job))
    if not found:
        raise LookupError(f"job {job!r} has no dead letter to replay; publish its request again as a new message")
    return await replay_letters(services, found)


async def _remove(services: Services, seq: int) -> int:
    try:
        await services.js.delete_msg(STREAM, seq)
    except nats.js.errors.APIError as exc:
        if isinstance(exc, nats.js.errors.NotFoundError) or exc.err_code == NO_MESSAGE_FOUND:
            return 0  # removed already (a replay racing this one)
        raise
    return 1
