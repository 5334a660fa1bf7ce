"""The HTTP gateway's API through a real HTTP client (httpx) against a real gateway on a free
loopback port, the session's NATS and S3, and the stages running in the test's loop: what a web
app does (upload URL -> PUT -> submit -> follow -> download), and every refusal as a problem."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from services import samples, stages
from services.transcode.samples import lavfi
from shared.config import Settings
from shared.jobs import new_job
from shared.runtime import Services
from tests.gatewaykit import RunningGateway, gateway, sse_events
from tests.helpers import eventually, running

ASSET_STAGES = ("upload", "variant", "transcode", "finalize")
EXPORT_STAGES = ("upload", "chunk", "finalize")


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(transcode_x264_preset="ultrafast", transcode_tmp_dir=str(tmp_path / "transcode"),
                            transcode_audio_presets=("mp3",))


async def upload(http: httpx.AsyncClient, filename: str, content_type: str, body: bytes) -> str:
    """POST /v1/uploads, then PUT the bytes to the presigned URL as a browser would; the key."""
    r = await http.post("/v1/uploads", json={"filename": filename, "content_type": content_type})
    assert r.status_code == 201, r.text
    ticket = r.json()
    assert ticket["method"] == "PUT" and ticket["expires_at"]
    async with httpx.AsyncClient() as s3:
        put = await s3.put(ticket["url"], content=body, headers=ticket["headers"])
    assert put.status_code == 200, put.text
    return str(ticket["key"])


async def until_final(http: httpx.AsyncClient, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        r = await http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        view: dict[str, Any] = r.json()
        return view if view["status"] in ("ready", "failed", "cancelled", "expired") else None

    return await eventually(probe, timeout=timeout, every=0.1)


def assert_problem(r: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("urn:jetmedia:")
    if kind:
        assert body["type"] == f"urn:jetmedia:problem:{kind}", body
    return body


async def upload_seq(services: Services) -> int:
    return int((await services.js.stream_info("JM_UPLOAD")).state.last_seq)


async def test_image_audio_and_export_through_the_api(services: Services) -> None:
    chosen = [stages.load(n) for n in sorted({*ASSET_STAGES, *EXPORT_STAGES})]
    async with gateway(services.settings) as gw, running(services, chosen), gw.client("web") as http:
        # an image: upload URL -> PUT -> submit (twice: a retry) -> ready -> download a variant
        photo = samples.photo(640, 480)
        image_key = await upload(http, "holiday photo.jpg", "image/jpeg", photo)
        assert image_key.startswith("uploads/") and image_key.endswith("/holiday photo.jpg")
        first = await http.post("/v1/assets", json={"key": image_key}, headers={"Idempotency-Key": "img-1"})
        assert first.status_code == 202, first.text
        accepted = first.json()
        assert accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}" and not accepted["duplicate"]
        assert accepted["events_url"] == f"/v1/jobs/{accepted['job_id']}/events"
        again = await http.post("/v1/assets", json={"key": image_key}, headers={"Idempotency-Key": "img-1"})
        assert again.status_code == 202 and again.json()["job_id"] == accepted["job_id"] and again.json()["duplicate"]
        image = await until_final(http, accepted["job_id"])
        assert image["status"] == "ready" and image["kind"] == "asset" and image["media"] == "image", image
        assert image["percent"] == 100.0 and image["error"] is None and image["attempt"] == 1
        webp = next(o for o in image["outputs"] if o["content_type"] == "image/webp")
        assert webp["width"] and webp["height"] and webp["bytes"] > 0
        async with httpx.AsyncClient() as s3:
            got = await s3.get(webp["url"])
        assert got.status_code == 200 and got.content[8:12] == b"WEBP" and len(got.content) == webp["bytes"]

        # the same Idempotency-Key after the job ended: still that job, and nothing published
        before = await upload_seq(services)
        late = await http.post("/v1/assets", json={"key": image_key}, headers={"Idempotency-Key": "img-1"})
        assert late.json() == {**accepted, "duplicate": True}
        assert await upload_seq(services) == before
        assert (await http.get(f"/v1/jobs/{accepted['job_id']}")).json()["attempt"] == 1

        # an audio file, followed over SSE to the end
        audio_key = await upload(http, "tone.wav", "audio/wav", lavfi("wav", 1.0))
        r = await http.post("/v1/assets", json={"key": audio_key})
        assert r.status_code == 202, r.text
        audio_id = r.json()["job_id"]
        async with http.stream("GET", r.json()["events_url"]) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            views = [e for e in [event async for event in sse_events(stream)] if e.get("event") == "job"]
        final = httpx.Response(200, content=views[-1]["data"]).json()
        assert final["id"] == audio_id and final["status"] == "ready" and final["media"] == "audio", final
        mp3 = next(o for o in final["outputs"] if o["name"] == "mp3")
        assert mp3["content_type"] == "audio/mpeg" and mp3["duration"] == pytest.approx(1.0, abs=0.1)
        async with httpx.AsyncClient() as s3:
            assert (await s3.get(mp3["url"])).content[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")

        # an export of both sources: one ZIP, downloadable
        r = await http.post("/v1/exports", json={"keys": [image_key, audio_key], "name": "both"},
                            headers={"Idempotency-Key": "export-1"})
        assert r.status_code == 202, r.text
        export = await until_final(http, r.json()["job_id"])
        assert export["status"] == "ready" and export["kind"] == "export" and export["download_url"], export
        archive_view = export["outputs"][0]
        assert archive_view["name"].startswith("both") and archive_view["content_type"] == "application/zip"
        async with httpx.AsyncClient() as s3:
            archive = (await s3.get(export["download_url"])).content
        names = zipfile.ZipFile(io.BytesIO(archive)).namelist()
        assert "holiday photo.jpg" in names and "tone.wav" in names, names
        assert zipfile.ZipFile(io.BytesIO(archive)).read("holiday photo.jpg") == photo

        listing = (await http.get("/v1/jobs", params={"kind": "asset", "limit": 10})).json()
        assert {job["id"] for job in listing["jobs"]} == {accepted["job_id"], audio_id}
        assert listing["dead_letters"] == 0


async def test_every_refusal_is_a_problem(services: Services) -> None:
    async with gateway(services.settings, gateway_body_limit=4096) as gw:
        async with gw.client("web") as http:
            await services.storage.put_bytes("uploads/there.jpg", samples.photo(64, 48))
            assert_problem(await http.post("/v1/assets", content=b"{not json",
                                           headers={"Content-Type": "application/json"}), 400, "malformed-body")
            assert_problem(await http.get("/v1/jobs", params={"limit": "many"}), 400, "invalid-parameter")
            assert_problem(await http.post("/v1/assets", json={"key": "uploads/there.jpg"},
                                           headers={"Idempotency-Key": "\x01"}), 400, "invalid-idempotency-key")
            missing = assert_problem(await http.post("/v1/assets", json={"bucket": "b"}), 422, "invalid-body")
            assert "key" in missing["detail"]
            bad_id = assert_problem(await http.post("/v1/assets", json={"key": "k", "job_id": "no spaces"}), 422)
            assert "job_id" in bad_id["detail"]
            assert_problem(await http.post("/v1/assets", json={"key": "uploads/not-there.jpg"}), 422, "no-such-object")
            assert_problem(await http.post("/v1/exports", json={}), 422, "nothing-to-export")
            assert_problem(await http.post("/v1/assets", json={"key": "x" * 5000}), 413, "body-too-large")
            assert_problem(await http.get("/v1/jobs/nope"), 404, "not-found")
            assert_problem(await http.get("/v1/jobs/not a job id"), 404, "not-found")
            assert_problem(await http.get("/v1/nothing-here"), 404)
            assert_problem(await http.put("/v1/jobs/nope"), 405)

            # 409: a reused Idempotency-Key with another body; cancelling a job that ended
            r = await http.post("/v1/assets", json={"key": "uploads/there.jpg"}, headers={"Idempotency-Key": "k1"})
            assert r.status_code == 202, r.text
            assert_problem(await http.post("/v1/assets", json={"key": "uploads/there.jpg", "presets": ["thumb"]},
                                           headers={"Idempotency-Key": "k1"}), 409, "idempotency-conflict")
            assert_problem(await http.delete(f"/v1/jobs/{r.json()['job_id']}"), 409, "not-started")
            async with running(services, [stages.load(n) for n in ASSET_STAGES]):
                done = await until_final(http, r.json()["job_id"])
            assert done["status"] == "ready"
            assert_problem(await http.delete(f"/v1/jobs/{r.json()['job_id']}"), 409, "already-ended")
            assert_problem(await http.post(f"/v1/jobs/{r.json()['job_id']}/retry"), 409, "not-rerunnable")
            same = await http.post("/v1/assets", json={"key": "uploads/there.jpg", "job_id": r.json()["job_id"]})
            assert same.status_code == 202 and same.json()["duplicate"]  # the same request, by its job id
            await services.jobs.create(new_job("made-by-the-cli", "asset"))
            cli_job = {"key": "uploads/there.jpg", "job_id": "made-by-the-cli"}
            assert_problem(await http.post("/v1/assets", json=cli_job), 409, "job-exists")
        async with gw.client("admin") as admin:
            someone_elses = {"key": "uploads/there.jpg", "job_id": r.json()["job_id"]}
            assert_problem(await admin.post("/v1/assets", json=someone_elses), 409, "idempotency-conflict")

        # 401: no token, a wrong one, a malformed header; never a token in the query of a POST
        async with gw.client(None) as anonymous:
            unauthorized = assert_problem(await anonymous.get("/v1/jobs"), 401, "unauthorized")
            assert "Bearer" in unauthorized["detail"]
            assert_problem(await anonymous.get("/v1/jobs", headers={"Authorization": "Bearer jm_wrong"}), 401)
            assert_problem(await anonymous.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)
            r = await anonymous.post("/v1/assets", params={"access_token": gw.tokens["web"]}, json={"key": "k"})
            assert_problem(r, 401)
            assert (await anonymous.get("/v1/jobs", params={"access_token": gw.tokens["web"]})).status_code == 200
            assert (await anonymous.get("/healthz")).json()["status"] == "ok"

        # 403: a scope the token lacks
        async with gw.client("reader") as reader:
            assert (await reader.get("/v1/jobs")).status_code == 200
            assert_problem(await reader.post("/v1/assets", json={"key": "uploads/there.jpg"}), 403, "forbidden-scope")
            assert_problem(await reader.post("/v1/uploads", json={"filename": "a.jpg"}), 403, "forbidden-scope")
            assert_problem(await reader.delete("/v1/jobs/anything"), 403, "forbidden-scope")
            assert_problem(await reader.post("/v1/jobs/anything/retry"), 403, "forbidden-scope")
        async with gw.client("hook") as hook:
            assert_problem(await hook.get("/v1/jobs"), 403, "forbidden-scope")
        async with gw.client("web") as web:
            assert_problem(await web.post("/v1/hooks/s3", json={"Records": []}), 403, "forbidden-scope")

        # 429: past the rate (burst 3, then 0.01/s), with Retry-After
        async with gw.client("slow") as slow:
            answers = [await slow.get("/v1/jobs") for _ in range(5)]
        assert [a.status_code for a in answers[:3]] == [200, 200, 200]
        limited = assert_problem(answers[3], 429, "rate-limited")
        assert 90 <= int(answers[3].headers["Retry-After"]) <= 101 and "0.01 requests/s" in limited["detail"]


async def test_scopes_prefixes_and_quota(services: Services) -> None:
    async with gateway(services.settings) as gw:
        await services.storage.put_bytes("uploads/web.jpg", samples.photo(64, 48))
        await services.storage.put_bytes("tenant-a/mine.jpg", samples.photo(64, 48))
        async with gw.client("tenant") as tenant, gw.client("web") as web, gw.client("admin") as admin:
            # the tenant's uploads land under its prefix; keys outside it are refused
            r = await tenant.post("/v1/uploads", json={"filename": "x.png", "content_type": "image/png"})
            assert r.json()["key"].startswith("tenant-a/uploads/")
            assert_problem(await tenant.post("/v1/assets", json={"key": "uploads/web.jpg"}), 403, "forbidden-prefix")
            assert_problem(await tenant.post("/v1/exports", json={"keys": ["tenant-a/mine.jpg", "uploads/web.jpg"]}),
                           403, "forbidden-prefix")
            assert_problem(await tenant.post("/v1/exports", json={"prefix": "uploads/"}), 403, "forbidden-prefix")
            assert_problem(await tenant.post("/v1/assets", json={"key": "tenant-a/mine.jpg", "bucket": "other"}),
                           403, "forbidden-bucket")
            mine = await tenant.post("/v1/assets", json={"key": "tenant-a/mine.jpg"})
            theirs = await web.post("/v1/assets", json={"key": "uploads/web.jpg"})
            assert mine.status_code == theirs.status_code == 202
            mine_id, theirs_id = mine.json()["job_id"], theirs.json()["job_id"]
            # before any stage ran, an accepted job reads as queued
            assert (await tenant.get(f"/v1/jobs/{mine_id}")).json()["status"] == "queued"
            async with running(services, [stages.load(n) for n in ASSET_STAGES]):
                await until_final(web, theirs_id)
                await until_final(tenant, mine_id)
            # the tenant sees its own job, not the other (404: no existence leak); web and admin see both
            assert_problem(await tenant.get(f"/v1/jobs/{theirs_id}"), 404)
            assert_problem(await tenant.get(f"/v1/jobs/{theirs_id}/events"), 404)
            assert {j["id"] for j in (await tenant.get("/v1/jobs")).json()["jobs"]} == {mine_id}
            assert {j["id"] for j in (await admin.get("/v1/jobs")).json()["jobs"]} == {mine_id, theirs_id}
            assert (await web.get(f"/v1/jobs/{mine_id}")).status_code == 200

        # quota: one job in flight per token; a second is refused until the first ends
        async with gw.client("quota") as quota:
            first = await quota.post("/v1/assets", json={"key": "uploads/web.jpg"})
            assert first.status_code == 202, first.text
            refused = assert_problem(await quota.post("/v1/assets", json={"key": "uploads/web.jpg"}), 429,
                                     "quota-exceeded")
            assert "1 jobs in flight" in refused["detail"] and quota.headers is not None
            retried = await quota.post("/v1/assets", json={"key": "uploads/web.jpg"},
                                       headers={"Idempotency-Key": "q"})
            assert_problem(retried, 429, "quota-exceeded")
            async with running(services, [stages.load(n) for n in ASSET_STAGES]):
                await until_final(quota, first.json()["job_id"])
            second = await quota.post("/v1/assets", json={"key": "uploads/web.jpg"})
            assert second.status_code == 202, second.text


async def test_cancel_and_retry(services: Services, tmp_path: Path) -> None:
    """DELETE cancels a running transcode; POST .../retry runs it again (attempt 2) to ready."""
    gw: RunningGateway
    async with gateway(services.settings) as gw, gw.client("web") as http:
        key = await upload(http, "long.wav", "audio/wav", lavfi("wav", 8.0))
        r = await http.post("/v1/assets", json={"key": key})
        job_id = r.json()["job_id"]
        async with running(services, [stages.load(n) for n in ASSET_STAGES]):
            async def transcoding() -> bool:
                return (await http.get(f"/v1/jobs/{job_id}")).json()["stage"] == "transcode"

            await eventually(transcoding, timeout=30)
            cancelled = await http.delete(f"/v1/jobs/{job_id}")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled" and "cancel" in cancelled.json()["error"]
            retried = await http.post(f"/v1/jobs/{job_id}/retry")
            assert retried.status_code == 202, retried.text

            async def second_attempt_ended() -> dict[str, Any] | None:
                view: dict[str, Any] = (await http.get(f"/v1/jobs/{job_id}")).json()
                return view if view["attempt"] == 2 and view["status"] not in ("queued", "running") else None

            final = await eventually(second_attempt_ended, timeout=90, every=0.1)
        assert final["status"] == "ready" and final["error"] is None, final


async def test_replicas_share_rate_limits_and_quotas(services: Services) -> None:
    """Two gateways with the same tokens: the rate and the jobs-in-flight cap are the token's, not
    the replica's (compare-and-set on the KV records), so alternating replicas gains nothing."""
    await services.storage.put_bytes("uploads/shared.jpg", samples.photo(64, 48))
    async with gateway(services.settings) as one, gateway(services.settings, replica_of=one) as two:
        answers = []
        for i in range(5):
            async with (one if i % 2 else two).client("slow") as slow:
                answers.append(await slow.get("/v1/jobs"))
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
        async with one.client("quota") as first, two.client("quota") as second:
            assert (await first.post("/v1/assets", json={"key": "uploads/shared.jpg"})).status_code == 202
            assert_problem(await second.post("/v1/assets", json={"key": "uploads/shared.jpg"}), 429, "quota-exceeded")

        # concurrent requests through both replicas: exactly the burst gets through (no double spend)
        async with one.client("burst") as a, two.client("burst") as b:
            rushed = await asyncio.gather(*[(a if i % 2 else b).get("/v1/jobs") for i in range(12)])
        assert sorted(r.status_code for r in rushed) == [200] * 5 + [429] * 7

        # 150 requests of one token at once (EventSource clients reconnecting after a deploy): one
        # compare-and-set per batch, so none is refused for contention
        async with one.client("crowd") as crowd:
            crowded = await asyncio.gather(*[crowd.get(f"/v1/jobs/none-{i}") for i in range(150)])
        assert {r.status_code for r in crowded} == {404}
