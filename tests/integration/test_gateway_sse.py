"""Live progress over Server-Sent Events: the gateway relays its one KV watch of the jobs bucket,
one `job` event per revision of the record (id = the revision), and a reconnect with Last-Event-ID
resumes."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from services import stages
from services.gateway.feed import JobFeed
from services.transcode.samples import lavfi
from shared.config import Settings
from shared.jobs import BUCKET, Job, new_job
from shared.runtime import Services
from tests.gatewaykit import RunningGateway, gateway, sse_events
from tests.helpers import eventually, running

ASSET_STAGES = ("upload", "variant", "transcode", "finalize")


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(transcode_tmp_dir=str(tmp_path / "transcode"), transcode_x264_preset="veryfast")


async def follow(gw: RunningGateway, job_id: str, *, last_event_id: str | None = None, stop_after: int | None = None,
                 query: bool = False) -> list[dict[str, Any]]:
    """The job events of one SSE connection (all of them, or the first `stop_after`, then hang up)."""
    events: list[dict[str, Any]] = []
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    if query:  # as EventSource must: the token and the resume point in the query
        params["access_token"] = gw.tokens["web"]
        if last_event_id:
            params["last_event_id"] = last_event_id
    else:
        headers = gw.headers("web") | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as http, \
            http.stream("GET", f"/v1/jobs/{job_id}/events", params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for event in sse_events(response):
            if event.get("event") == "job":
                events.append({**json.loads(event["data"]), "rev": int(event["id"])})
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events


async def test_every_revision_in_order_and_a_resume_without_gaps_or_repeats(services: Services) -> None:
    async with gateway(services.settings) as gw, gw.client("web") as http:
        await services.storage.put_bytes("uploads/clip.mp4", lavfi("mp4", 6.0, size="640x360"))
        job_id = (await http.post("/v1/assets", json={"key": "uploads/clip.mp4"})).json()["job_id"]
        watched: list[int] = []  # the revisions a watch of our own sees (what the gateway should relay)
        watcher = await services.jobs.kv.watch(job_id)

        async def own_watch() -> None:
            while True:
                entry = await watcher.updates(timeout=60)
                if entry is None:
                    continue
                watched.append(entry.revision)
                if json.loads(entry.value)["status"] == "ready":
                    return

        control = asyncio.create_task(follow(gw, job_id))  # never interrupted
        first_part = asyncio.create_task(follow(gw, job_id, stop_after=2))  # hangs up after two events
        mine = asyncio.create_task(own_watch())
        await asyncio.sleep(0.3)  # both streams are open before anything happens to the job
        async with running(services, [stages.load(n) for n in ASSET_STAGES]):
            before = await first_part
            after = await follow(gw, job_id, last_event_id=str(before[-1]["rev"]))
            everything = await control
            await mine
        await watcher.stop()

        # resuming after the final revision (query form, as EventSource sends it): nothing more, and it ends
        latest = (await services.jobs.kv.get(job_id)).revision  # (the outbox may have marked it since)
        assert await follow(gw, job_id, last_event_id=str(latest), query=True) == []
        again = await follow(gw, job_id, query=True)
        assert [e["rev"] for e in again] == [latest]  # a fresh client gets the current (final) record

    ids = [event["rev"] for event in everything]
    assert ids == sorted(set(ids)) and ids == watched, (ids, watched)  # every revision, in order, once
    percents = [event["percent"] for event in everything]
    assert percents == sorted(percents) and percents[-1] == 100.0, percents
    assert any(0 < p < 100 for p in percents), percents  # progress between start and end, not just the ends
    assert everything[-1]["status"] == "ready" and all(e["status"] != "ready" for e in everything[:-1])
    assert everything[-1]["outputs"] and all(o["url"] for o in everything[-1]["outputs"])
    assert any(e["stage"] == "transcode" for e in everything)

    resumed = [event["rev"] for event in after]
    assert resumed and resumed[0] > before[-1]["rev"]  # no repeats
    start = ids.index(resumed[0])
    assert resumed == ids[start:], (resumed, ids)  # from there on, no gaps, to the final one
    assert [e["rev"] for e in before] == ids[:2]
    assert latest is not None and latest >= ids[-1]


async def test_heartbeats_and_sse_metrics(services: Services) -> None:
    async with gateway(services.settings, gateway_heartbeat=0.2) as gw, gw.client("web") as http:
        await services.storage.put_bytes("uploads/idle.wav", lavfi("wav", 1.0))
        job_id = (await http.post("/v1/assets", json={"key": "uploads/idle.wav"})).json()["job_id"]
        comments: list[str] = []
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.headers["cache-control"] == "no-cache"
            async for event in sse_events(response):
                if "comment" in event:
                    comments.append(event["comment"])
                    if len(comments) == 1:
                        metrics = (await http.get("/metrics")).text
                        assert "jetmedia_http_sse_clients 1.0" in metrics
                if len(comments) == 3:
                    break
        assert comments == ["heartbeat"] * 3  # no stage runs: nothing but heartbeats

        async def closed() -> bool:  # the stream's request is counted once it has ended
            text = (await http.get("/metrics")).text
            return "jetmedia_http_sse_clients 0.0" in text and 'route="/v1/jobs/{job_id}/events"' in text

        await eventually(closed, timeout=10)
        metrics = (await http.get("/metrics")).text
        assert 'jetmedia_http_requests_total{method="POST",route="/v1/assets",status="202"}' in metrics
        assert 'route="/v1/jobs/{job_id}/events"' in metrics and "jetmedia_http_request_duration_seconds" in metrics


async def consumers(services: Services) -> int:
    return (await services.js.stream_info(f"KV_{BUCKET}")).state.consumer_count


async def test_streams_share_one_watch_of_the_bucket(services: Services) -> None:
    """However many streams are open or have been, the jobs bucket's stream holds no consumer per
    stream (nats-server caps a stream at 1,000 consumers; one watch per stream broke streams off
    past ~1,000 a minute): the gateway's one watch fans each update out to every stream of the job."""
    async with gateway(services.settings, gateway_heartbeat=30) as gw, \
            httpx.AsyncClient(base_url=gw.url, headers=gw.headers("crowd"), timeout=60,
                              limits=httpx.Limits(max_connections=None)) as http:
        live, done = f"sse-fan-{secrets.token_hex(4)}", f"sse-done-{secrets.token_hex(4)}"
        await services.jobs.create(new_job(live, "asset", status="running", stage="transcode"))
        first = (await services.jobs.kv.get(live)).revision
        await services.jobs.create(new_job(done, "asset", status="ready", stage="finalize", percent=100.0))
        before = await consumers(services)

        opened = 0
        all_open = asyncio.Event()
        n = 120

        async def follow_live() -> list[int]:
            nonlocal opened
            revs: list[int] = []
            async with http.stream("GET", f"/v1/jobs/{live}/events") as response:
                assert response.status_code == 200
                async for event in sse_events(response):
                    if event.get("event") == "job":
                        revs.append(int(event["id"]))
                        if len(revs) == 1:
                            opened += 1
                            if opened == n:
                                all_open.set()
            return revs

        streams = [asyncio.create_task(follow_live()) for _ in range(n)]
        await asyncio.wait_for(all_open.wait(), 60)
        assert await consumers(services) <= before + 2  # one watch per stream: before + 120
        await services.jobs.update(live, lambda job: msgspec.structs.replace(job, percent=50.0))
        last = await services.jobs.update(live, lambda job: msgspec.structs.replace(job, status="ready"))
        results = await asyncio.wait_for(asyncio.gather(*streams), 60)
        final_rev = (await services.jobs.kv.get(live)).revision
        assert final_rev is not None and last.status == "ready"
        for revs in results:  # every stream: the record it opened on, then each update, in order, once
            assert len(revs) == 3 and revs[0] == first and revs == sorted(set(revs)) and revs[-1] == final_rev, revs

        async def open_and_close() -> int:  # a final job: one event, then the gateway ends the stream
            async with http.stream("GET", f"/v1/jobs/{done}/events") as response:
                return len([e async for e in sse_events(response) if e.get("event") == "job"])

        for _ in range(10):  # 300 more streams opened and closed in a burst
            assert await asyncio.gather(*(open_and_close() for _ in range(30))) == [1] * 30
        assert await consumers(services) <= before + 2


async def test_a_slow_stream_is_ended_not_buffered_and_stop_ends_the_rest(services: Services) -> None:
    job_id = f"sse-slow-{secrets.token_hex(4)}"
    # created before the watch starts (updates only), so each listener sees exactly the 4 updates
    await services.jobs.create(new_job(job_id, "asset", status="running", stage="transcode"))
    feed = JobFeed(services.nc, services.js, queue_size=2)
    await feed.start()
    try:
        slow, other = feed.listen(job_id), feed.listen(job_id)
        for percent in (10.0, 20.0, 30.0, 40.0):
            def progress(job: Job, percent: float = percent) -> Job:
                return msgspec.structs.replace(job, percent=percent)

            await services.jobs.update(job_id, progress)
            assert await asyncio.wait_for(other.queue.get(), 10) is not None  # this one keeps up

        async def dropped() -> bool:
            return slow.ended and feed.dropped == 1

        await eventually(dropped, timeout=10)
        assert slow.queue.qsize() <= 2 and not other.ended and feed.listeners == 1
    finally:
        await feed.stop()
    assert other.ended and await asyncio.wait_for(other.queue.get(), 1) is None  # stopping ends every stream


async def test_a_lost_watch_ends_the_streams_cleanly_and_is_made_anew(services: Services) -> None:
    job_id = f"sse-lost-{secrets.token_hex(4)}"
    # created before the watch starts (updates only): nothing but the end marker reaches the listener
    await services.jobs.create(new_job(job_id, "asset", status="running", stage="transcode"))
    feed = JobFeed(services.nc, services.js, check_every=0.2)
    await feed.start()
    try:
        cut_off = feed.listen(job_id)
        name = await feed.consumer()
        assert name is not None
        await services.js.delete_consumer(f"KV_{BUCKET}", name)  # as if the server lost it

        async def restarted() -> bool:
            return cut_off.ended and feed.restarts == 1 and await feed.ready(0.1)

        await eventually(restarted, timeout=20)
        assert await asyncio.wait_for(cut_off.queue.get(), 1) is None  # its stream ends (the client resumes)
        assert await feed.consumer() not in (None, name)
        anew = feed.listen(job_id)
        await services.jobs.update(job_id, lambda job: msgspec.structs.replace(job, status="ready"))
        update = await asyncio.wait_for(anew.queue.get(), 10)
        assert update is not None and b'"ready"' in update[1]
    finally:
        await feed.stop()


async def test_a_last_event_id_past_every_revision_still_gets_the_end(services: Services) -> None:
    """A Last-Event-ID no revision has reached (a bogus one, or one from before the bucket was made
    anew) skipped every update, the final one too: the stream heartbeated forever."""
    job_id = f"sse-past-{secrets.token_hex(4)}"
    await services.jobs.create(new_job(job_id, "asset", status="running", stage="variant"))
    async with gateway(services.settings, gateway_heartbeat=0.5) as gw:
        stream = asyncio.create_task(follow(gw, job_id, last_event_id=str(10**12)))
        await asyncio.sleep(0.5)
        await services.jobs.update(job_id, lambda job: msgspec.structs.replace(job, percent=50.0))
        await services.jobs.update(job_id, lambda job: msgspec.structs.replace(job, status="ready", percent=100.0))
        events = await asyncio.wait_for(stream, 20)
    assert [(e["status"], e["percent"]) for e in events] == [("ready", 100.0)]
