"""Dead letters replayed, purged, a job retried (shared/dlq.py; issue 12 item 3).

A replay re-publishes the original as a new message and removes the letter: a failed job runs
once more (attempt 2) and a second replay runs nothing, whether it races the first (same derived
`Nats-Msg-Id`) or comes after it (no letter left).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from services import samples, stages
from shared import bus, dlq
from shared import messages as m
from shared.jobs import Job
from shared.runtime import Services
from tests.helpers import eventually, final_job, running, stream_events


def request(job: str, key: str) -> bytes:
    return json.dumps({"specversion": "1.0", "type": "jetmedia.asset.uploaded.v1", "id": job, "source": "app",
                       "data": {"key": key}}).encode()


async def failed_with_a_letter(services: Services, job: str, key: str) -> None:
    await services.js.publish(m.UPLOAD_ASSET, request(job, key), headers={bus.MSG_ID: f"{job}-first"})
    failed = await eventually(lambda: final_job(services, job))
    assert failed.status == "failed"
    await eventually(lambda: dlq.letters(services, dlq.Which(job=job)))


async def ready_events(services: Services, job: str) -> list[m.AnyEvent]:
    return [e for e in await stream_events(services, "JM_EVENTS") if isinstance(e, m.AssetReady) and e.subject == job]


async def test_a_replayed_letter_runs_its_job_once(services: Services) -> None:
    async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
        await failed_with_a_letter(services, "r-once", "uploads/r-once.jpg")
        await services.storage.put_bytes("uploads/r-once.jpg", samples.photo(320, 240))
        [letter] = await dlq.letters(services, dlq.Which(job="r-once"))

        first = await dlq.replay(services, dlq.Which(stage="upload", job="r-once"))
        again = await dlq.replay_letters(services, [letter])  # the same letter, as a racing replay would
        job: Job = await eventually(lambda: _status(services, "r-once", "ready"), timeout=30)
        later = await dlq.replay(services, dlq.Which(job="r-once"))  # nothing left to replay
        await eventually(lambda: ready_events(services, "r-once"))

    assert first.replayed == [letter.letter.id] and not first.skipped
    assert again.replayed == [letter.letter.id]  # published again, dropped by the server as a duplicate
    assert later.replayed == [] and later.skipped == []
    assert job.attempt == 2 and "does not exist" in job.errors[0].reason
    assert len(await ready_events(services, "r-once")) == 1
    assert await dlq.letters(services, dlq.Which(job="r-once")) == []
    final = await services.jobs.get("r-once")
    assert final is not None and final.attempt == 2 and final.status == "ready"


async def test_retry_replays_a_jobs_letters_and_says_when_there_are_none(services: Services) -> None:
    async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
        await failed_with_a_letter(services, "r-retry", "uploads/r-retry.jpg")
        await services.storage.put_bytes("uploads/r-retry.jpg", samples.photo(320, 240))
        done = await dlq.retry(services, "r-retry")
        job = await eventually(lambda: _status(services, "r-retry", "ready"), timeout=30)
    assert len(done.replayed) == 1 and job.attempt == 2
    with pytest.raises(LookupError, match="no dead letter"):
        await dlq.retry(services, "r-retry")


async def test_refused_letters_are_not_replayed_and_purge_removes_by_stage_and_time(services: Services) -> None:
    async with running(services, [stages.load("upload")]):
        await services.js.publish(m.UPLOAD_ASSET, b"not json", headers={bus.MSG_ID: "junk"})
        await failed_with_a_letter(services, "r-purge", "uploads/none.jpg")
        await eventually(lambda: _letters(services, 2))
        skipped = await dlq.replay(services, dlq.Which(stage="upload"))
        assert [why for _, why in skipped.skipped] == [
            "a refused message (not JSON or not the schema): the same bytes would be refused again"]
        assert len(skipped.replayed) == 1  # the other one went back (and failed again: no source)
        await eventually(lambda: _letters(services, 2))  # the refused one, and the replay's own new letter

    newest = max(s.letter.time for s in await dlq.letters(services) if s.letter.time is not None)
    assert await dlq.purge(services, dlq.Which(stage="variant")) == 0
    assert await dlq.purge(services, dlq.Which(since=newest + timedelta(seconds=1))) == 0
    assert await dlq.purge(services, dlq.Which(stage="upload")) == 2
    assert await dlq.letters(services) == []


async def _letters(services: Services, n: int) -> list[dlq.Stored] | None:
    found = await dlq.letters(services)
    return found if len(found) >= n else None


async def _status(services: Services, job_id: str, status: str) -> Job | None:
    job = await services.jobs.get(job_id)
    return job if job is not None and job.status == status else None


async def test_the_cli_retries_a_job_and_purges_letters(services: Services) -> None:
    import subprocess
    import sys

    from tests.helpers import settings_env

    def cli(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", *words], capture_output=True, text=True,
                              env={**__import__("os").environ, **settings_env(services.settings)}, timeout=60)

    async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
        await failed_with_a_letter(services, "r-cli", "uploads/r-cli.jpg")
        await services.storage.put_bytes("uploads/r-cli.jpg", samples.photo(320, 240))
        done = cli("retry", "r-cli")
        assert done.returncode == 0, done.stderr
        assert "replayed dlq:JM_UPLOAD:" in done.stdout
        job = await eventually(lambda: _status(services, "r-cli", "ready"), timeout=30)
        assert job.attempt == 2
        nothing = cli("retry", "r-cli")
        assert nothing.returncode == 1 and "no dead letter" in nothing.stderr
        await services.js.publish(m.UPLOAD_ASSET, b"junk", headers={bus.MSG_ID: "junk-cli"})
        await eventually(lambda: _letters(services, 1))
    purged = cli("dlq", "purge", "--stage", "upload", "--since", "1h", "--json")
    assert purged.returncode == 0 and json.loads(purged.stdout) == {"purged": 1}, purged.stderr


async def test_a_stage_letter_replayed_reopens_its_job(services: Services) -> None:
    """Variant gave up (its source vanished after upload checked it): the job failed at variant.
    Put the source back and replay the variant letter: the job reopens (attempt 2) and ends ready."""
    photo = samples.photo(320, 240)
    await services.storage.put_bytes("uploads/r-stage.jpg", photo)
    async with running(services, [stages.load("upload")]):
        await services.js.publish(m.UPLOAD_ASSET, request("r-stage", "uploads/r-stage.jpg"),
                                  headers={bus.MSG_ID: "r-stage"})
        await eventually(lambda: _variant_queued(services))
    await services.storage.delete("uploads/r-stage.jpg")
    async with running(services, [stages.load(n) for n in ("variant", "finalize")]):
        failed = await eventually(lambda: final_job(services, "r-stage"), timeout=30)
        assert failed.status == "failed" and failed.errors[-1].stage == "variant"
        await services.storage.put_bytes("uploads/r-stage.jpg", photo)
        done = await dlq.replay(services, dlq.Which(stage="variant", job="r-stage"))
        job = await eventually(lambda: _status(services, "r-stage", "ready"), timeout=30)
    assert len(done.replayed) == 1 and job.attempt == 2 and job.outputs
    assert [type(e).__name__ for e in await stream_events(services, "JM_EVENTS") if e.subject == "r-stage"] == [
        "JobFailed", "AssetReady"]


async def _variant_queued(services: Services) -> bool:
    return bool((await services.js.stream_info("JM_VARIANT")).state.messages)
