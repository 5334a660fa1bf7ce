"""The producer contract (issue 12): every message a producer sends gets an answer it can find.

Payloads are raw bytes published with the plain NATS client, as a producer in another language
would send them, never built from our Structs. Where the event names a valid job id the answer is
that job's KV record (`failed`, with the field path in the reason) and a `jetmedia.job.failed.v1`;
otherwise it is the dead letter and a `jetmedia.events.rejected` event. Ids are never rewritten.
"""

from __future__ import annotations

import json

import pytest

from services import samples, stages
from shared import bus
from shared import messages as m
from shared.jobs import Job
from shared.runtime import Services
from tests.helpers import eventually, final_job, running, stream_events

UPLOADED = "jetmedia.asset.uploaded.v1"


def raw(event_id: object, data: object, kind: str = UPLOADED, **extra: object) -> bytes:
    return json.dumps({"specversion": "1.0", "type": kind, "id": event_id, "source": "node-app", "data": data,
                       **extra}).encode()


async def publish_raw(services: Services, subject: str, payload: bytes, msg_id: str) -> None:
    await services.js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})


async def events(services: Services) -> list[m.AnyEvent]:
    return await stream_events(services, "JM_EVENTS")


# (name, payload, job that must get a failed record or None, text the reason must contain)
WITH_A_JOB = [
    ("missing-field", raw("c-missing", {}), "c-missing", "invalid event: data.key: required"),
    ("wrong-type", raw("c-wrong", {"key": 5}), "c-wrong", "data.key: expected str, got int"),
    ("oversized-key", raw("c-long", {"key": "k" * 1025}), "c-long", "data.key: expected str of length <= 1024"),
    ("bad-id-named-job", raw("has space", {"key": "k.jpg", "job_id": "c-named"}), "c-named",
     "id: not a job id"),
    ("unknown-type", raw("c-unknown", {"key": "k"}, kind="jetmedia.asset.uploaded.v9"), "c-unknown",
     "type: unknown event type 'jetmedia.asset.uploaded.v9'"),
]
WITHOUT_A_JOB = [
    ("not-json", b"\x00\xffnot json {", None, "invalid event: not JSON"),
    ("json-not-object", b"[1, 2]", None, "(the event): expected object, got array"),
    ("bad-id-colon", raw("urn:uuid:1234", {"key": "k.jpg"}), "urn:uuid:1234", "id: not a job id"),
    ("bad-id-slash", raw("a/b", {"key": "k.jpg"}), "a/b", "id: not a job id"),
    ("id-too-long", raw("x" * 201, {"key": "k.jpg"}), "x" * 201, "id: expected str of length <= 200"),
    ("bad-job-id", raw("c-fine", {"key": "k.jpg", "job_id": "a b"}), "a b", "data.job_id: not a job id"),
]


async def test_refused_events_get_the_answer_a_producer_can_find(services: Services) -> None:
    await services.storage.put_bytes("uploads/ok.jpg", samples.photo(320, 240))
    async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
        for name, payload, _job, _reason in WITH_A_JOB + WITHOUT_A_JOB:
            await publish_raw(services, m.UPLOAD_ASSET, payload, name)
        await publish_raw(services, m.UPLOAD_ASSET, raw("c-good", {"key": "uploads/ok.jpg"}), "good")
        good = await eventually(lambda: final_job(services, "c-good"), timeout=30)
        letters = await eventually(lambda: _count(services, "JM_DLQ", len(WITH_A_JOB) + len(WITHOUT_A_JOB)))
        published = await eventually(lambda: _count(services, "JM_EVENTS", len(WITH_A_JOB) + len(WITHOUT_A_JOB) + 1))

    assert good.status == "ready"  # the stage kept working
    assert all(isinstance(letter, m.DeadLetter) and letter.data.permanent for letter in letters)
    failed = {e.data.job: e for e in published if isinstance(e, m.JobFailed)}
    refused = [e for e in published if isinstance(e, m.EventRejected)]
    assert sorted(failed) == sorted(job for _, _, job, _ in WITH_A_JOB)
    for name, _payload, job_id, reason in WITH_A_JOB:
        job = await services.jobs.get(job_id)
        assert job is not None and job.status == "failed", name
        assert reason in job.errors[-1].reason, (name, job.errors[-1].reason)
        assert reason in failed[job_id].data.error and failed[job_id].subject == job_id
    assert len(refused) == len(WITHOUT_A_JOB)
    for name, _payload, job_id, reason in WITHOUT_A_JOB:
        [answer] = [e for e in refused if reason in e.data.reason and e.data.job == job_id]
        assert answer.data.original_subject == m.UPLOAD_ASSET and answer.data.stage == "upload", name
        assert answer.data.dead_letter in {letter.id for letter in letters}
    assert {e.data.original_id for e in refused if e.data.job == "urn:uuid:1234"} == {"urn:uuid:1234"}
    keys = set(await services.jobs.kv.keys())  # records only under the ids the producers sent
    assert keys == {job for _, _, job, _ in WITH_A_JOB} | {"c-good"}, keys


async def test_an_accepted_id_is_the_job_id_everywhere(services: Services) -> None:
    await services.storage.put_bytes("uploads/ids.jpg", samples.photo(320, 240))
    job_id = "tenant-7.order_42.photo=1"
    async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
        await publish_raw(services, m.UPLOAD_ASSET, raw(job_id, {"key": "uploads/ids.jpg"}), "ids")
        job = await eventually(lambda: final_job(services, job_id), timeout=30)
    assert job.status == "ready" and job.id == job_id
    [ready] = [e for e in await events(services) if isinstance(e, m.AssetReady)]
    assert ready.subject == ready.data.job == job_id


async def test_a_failed_job_runs_again_when_the_request_is_sent_again(services: Services) -> None:
    """Fail (missing source), upload the source, publish the same event again with a new msg id:
    attempt 2 ends ready, and the record keeps the first attempt's reason."""
    request = raw("c-rerun", {"key": "uploads/late.jpg"})
    async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
        await publish_raw(services, m.UPLOAD_ASSET, request, "rerun-1")
        first = await eventually(lambda: final_job(services, "c-rerun"))
        assert first.status == "failed" and first.attempt == 1
        await services.storage.put_bytes("uploads/late.jpg", samples.photo(320, 240))
        await publish_raw(services, m.UPLOAD_ASSET, request, "rerun-2")
        job: Job = await eventually(lambda: _status(services, "c-rerun", "ready"), timeout=30)

    assert job.attempt == 2 and job.outputs
    assert [(e.attempt, e.stage) for e in job.errors] == [(1, "upload")]
    assert "uploads/late.jpg does not exist" in job.errors[0].reason
    answers = [(type(e).__name__, e.id) for e in await events(services) if e.subject == "c-rerun"]
    assert answers == [("JobFailed", "c-rerun:failed"), ("AssetReady", "c-rerun:ready:2")]


async def test_a_redelivered_request_does_not_rerun_the_job_it_failed(services: Services) -> None:
    """Only a new message re-runs: the message that started the attempt, seen again, is skipped."""
    async with running(services, [stages.load("upload")]):
        await publish_raw(services, m.UPLOAD_ASSET, raw("c-once", {"key": "uploads/none.jpg"}), "once-1")
        job = await eventually(lambda: final_job(services, "c-once"))
    assert job.started_by is not None
    assert not await _same_request_reruns(services, job)


async def _same_request_reruns(services: Services, job: Job) -> bool:
    again, started = await services.jobs.start(job, job.started_by)
    return started or again.attempt != job.attempt


@pytest.mark.parametrize("times", [2])
async def test_cancel_announces_job_cancelled_exactly_once(services: Services, times: int) -> None:
    await services.jobs.create(Job(id="c-cancel", kind="export", status="running", created=m.now(),
                                   updated=m.now()))
    cancel = raw("cancel-1", {"job": "c-cancel", "reason": "customer left"}, kind="jetmedia.job.cancel.v1")
    async with running(services, [stages.load("upload")]):
        for n in range(times):  # twice, as separate messages: the second finds the job already cancelled
            await publish_raw(services, m.UPLOAD_CANCEL, cancel, f"cancel-{n}")
        await eventually(lambda: _status(services, "c-cancel", "cancelled"))
        await eventually(lambda: _count(services, "JM_EVENTS", 1))
        await services.cancel("c-cancel")  # and once more directly
    cancelled = [e for e in await events(services) if e.subject == "c-cancel"]
    assert [type(e).__name__ for e in cancelled] == ["JobCancelled"]
    assert isinstance(cancelled[0], m.JobCancelled)
    assert cancelled[0].data.reason == "customer left" and cancelled[0].id == "c-cancel:cancelled"
    job = await services.jobs.get("c-cancel")
    assert job is not None and job.announced == ["cancelled"]


async def test_a_cancelled_job_can_be_run_again(services: Services) -> None:
    await services.storage.put_bytes("uploads/again.jpg", samples.photo(320, 240))
    await services.jobs.create(Job(id="c-again", kind="asset", status="running", created=m.now(), updated=m.now()))
    await services.cancel("c-again")
    async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
        await publish_raw(services, m.UPLOAD_ASSET, raw("c-again", {"key": "uploads/again.jpg"}), "again")
        job = await eventually(lambda: _status(services, "c-again", "ready"), timeout=30)
    assert job.attempt == 2 and [e.stage for e in job.errors] == ["cancel"]
    kinds = [type(e).__name__ for e in await events(services) if e.subject == "c-again"]
    assert kinds == ["JobCancelled", "AssetReady"]


async def _count(services: Services, stream: str, n: int) -> list[m.AnyEvent] | None:
    found = await bus.read_stream(services.js, stream)
    return found if len(found) >= n else None


async def _status(services: Services, job_id: str, status: str) -> Job | None:
    job = await services.jobs.get(job_id)
    return job if job is not None and job.status == status else None


async def test_an_expired_export_is_announced_once(services: Services) -> None:
    from datetime import timedelta

    from services import cleanup

    expires = m.now() + timedelta(hours=1)
    await services.storage.put_bytes("exports/c-exp/c-exp.zip", b"PK\x05\x06" + b"\x00" * 18)
    await services.jobs.create(Job(id="c-exp", kind="export", status="ready", stage="finalize", created=m.now(),
                                   updated=m.now(), url="https://example/c-exp.zip", expires=expires,
                                   announced=["ready"]))
    assert (await cleanup.sweep(services, now=expires + timedelta(seconds=1))).expired == 1
    await cleanup.sweep(services, now=expires + timedelta(seconds=2))
    await cleanup._expire(services, await services.jobs.get("c-exp"))  # type: ignore[arg-type]  # a racing replica
    announced = [e for e in await events(services) if e.subject == "c-exp"]
    assert [type(e).__name__ for e in announced] == ["JobExpired"]
    assert isinstance(announced[0], m.JobExpired) and announced[0].id == "c-exp:expired"


async def test_a_refused_copy_leaves_an_existing_job_alone(services: Services) -> None:
    """A malformed event naming a running job must not fail it: the rejected event answers it."""
    await services.jobs.create(Job(id="c-busy", kind="asset", status="running", created=m.now(), updated=m.now()))
    async with running(services, [stages.load("upload")]):
        await publish_raw(services, m.UPLOAD_ASSET, raw("c-busy", {"key": 1}), "busy-bad")
        [answer] = await eventually(lambda: _count(services, "JM_EVENTS", 1))
    assert isinstance(answer, m.EventRejected) and answer.data.job == "c-busy"
    assert "data.key: expected str, got int" in answer.data.reason
    job = await services.jobs.get("c-busy")
    assert job is not None and job.status == "running" and job.errors == []
