"""Bodies a curl user sends without reading our Python: each gets a specific problem, never a 500.

Before, a key S3 refuses to name (`uploads/../x.jpg`: SeaweedFS' HEAD says 400), a bucket name the
S3 client refuses, and JSON nested deeper than the decoder goes were each a 500 "internal" with a
traceback in the log; an empty body read `data: 'data'`, a bad job id quoted a regular expression,
and a callback URL with port 99999 was accepted, to fail as a job a moment later.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time

import pytest

from services import samples
from services.gateway import slowclients
from shared.jobs import new_job
from shared.runtime import Services
from tests.gatewaykit import gateway
from tests.integration.test_gateway_api import assert_problem

JSON = {"Content-Type": "application/json"}


async def test_hostile_bodies_get_specific_problems(services: Services, caplog: pytest.LogCaptureFixture) -> None:
    await services.storage.put_bytes("uploads/there.jpg", samples.photo(64, 48))
    deep = b'{"key": "uploads/there.jpg", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with gateway(services.settings, gateway_body_limit=256 * 1024) as gw, gw.client("web") as http:
        refused = assert_problem(await http.post("/v1/assets", json={"key": "uploads/../x.jpg"}), 422, "s3-refused")
        assert "S3 refuses to read s3://jetmedia-test/uploads/../x.jpg (400" in refused["detail"]
        bucket = assert_problem(await http.post("/v1/assets", json={"key": "k.jpg", "bucket": "Not_A_Bucket!"}),
                                422, "invalid-bucket")
        assert "'Not_A_Bucket!'" in bucket["detail"]
        too_deep = assert_problem(await http.post("/v1/assets", content=deep, headers=JSON), 400, "malformed-body")
        assert "nested too deeply" in too_deep["detail"]
        empty = assert_problem(await http.post("/v1/assets", headers=JSON), 422, "invalid-body")
        assert "the body is empty" in empty["detail"]
        job_id = assert_problem(await http.post("/v1/exports", json={"keys": ["k"], "job_id": "a b"}), 422)
        assert job_id["detail"].startswith("job_id: not a job id (dot-separated"), job_id
        for route, body in (("/v1/assets", {"key": "uploads/there.jpg"}), ("/v1/exports", {"keys": ["k"]})):
            port = assert_problem(await http.post(route, json={**body, "callback_url": "http://hooks.example:99999/"}),
                                  422, "invalid-callback-url")
            assert "Port out of range" in port["detail"]
        assert (await http.post("/v1/assets", json={"key": "uploads/there.jpg"})).status_code == 202  # still serving
        form = assert_problem(await http.post("/v1/assets", data={"key": "uploads/there.jpg"}), 415)  # curl -d k=v
        assert "'application/x-www-form-urlencoded'; send JSON with Content-Type: application/json" in form["detail"]
        gzipped = assert_problem(await http.post("/v1/assets", content=gzip.compress(b'{"key": "k"}'),
                                                 headers={**JSON, "Content-Encoding": "gzip"}), 415)
        assert "'gzip'-encoded" in gzipped["detail"]
        plain = await http.post("/v1/assets", content=b'{"key": "uploads/there.jpg"}',  # JSON under another type:
                                headers={"Content-Type": "text/plain"})  # still read
        assert plain.status_code == 202, plain.text
        crlf = assert_problem(await http.post("/v1/uploads", json={"filename": "a.jpg",
                                                                    "content_type": "image/jpeg\r\nX-Evil: 1"}), 422)
        assert "is not a header value" in crlf["detail"]
        head = await http.head("/healthz")  # `curl -I`, uptime monitors
        assert head.status_code == 200 and head.content == b"", head
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage()[:200] for r in caplog.records]


async def test_the_same_request_sent_ten_times_at_once_is_one_job_started_once(services: Services) -> None:
    """Before, every request that raced past the "seen before?" read answered `duplicate: false`."""
    await services.storage.put_bytes("uploads/there.jpg", samples.photo(64, 48))
    async with gateway(services.settings) as gw, gw.client("web") as http:
        answers = await asyncio.gather(*(http.post("/v1/exports", json={"keys": ["uploads/there.jpg"],
                                                                         "job_id": "gw-race"}) for _ in range(10)))
    assert [r.status_code for r in answers] == [202] * 10, [r.text for r in answers]
    assert sorted(r.json()["duplicate"] for r in answers) == [False] + [True] * 9
    assert (await services.js.stream_info("JM_UPLOAD")).state.messages == 1  # the copies were dropped


async def test_a_tenant_cannot_write_into_another_assets_outputs(services: Services) -> None:
    """Outputs go to `variants/{asset}/`: a token limited to `tenant-a/` that named another
    tenant's asset id got its photo's variants written over theirs."""
    await services.storage.put_bytes("tenant-a/mine.jpg", samples.photo(64, 48))
    async with gateway(services.settings) as gw, gw.client("tenant") as tenant, gw.client("admin") as admin:
        refused = assert_problem(await tenant.post("/v1/assets", json={"key": "tenant-a/mine.jpg",
                                                                        "asset_id": "someone-elses"}),
                                 403, "forbidden-asset-id")
        assert "may not choose asset_id" in refused["detail"]
        same = await tenant.post("/v1/assets", json={"key": "tenant-a/mine.jpg", "job_id": "ta-1",
                                                     "asset_id": "ta-1"})
        assert same.status_code == 202, same.text  # naming the asset after its own job changes nothing
        admins = await admin.post("/v1/assets", json={"key": "tenant-a/mine.jpg", "asset_id": "any"})
        assert admins.status_code == 202, admins.text


async def test_a_request_that_trickles_in_is_cut_off_and_a_long_answer_is_not(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that sent half a request head (or nothing) was held for good: a few hundred of
    them (slowloris) took every file descriptor. Now the request must be in within the limit; an
    SSE stream, once asked for, runs as long as it likes."""
    monkeypatch.setattr(slowclients, "REQUEST_TIMEOUT", 1.0)
    await services.jobs.create(new_job("gw-slow", "asset", status="running", stage="variant"))
    async with gateway(services.settings, gateway_heartbeat=0.4) as gw:
        host, port = gw.url.removeprefix("http://").split(":")

        async def held_for(first: bytes) -> float:
            reader, writer = await asyncio.open_connection(host, int(port))
            started = time.monotonic()
            writer.write(first)
            assert await asyncio.wait_for(reader.read(), 20) == b""  # closed without an answer
            writer.close()
            return time.monotonic() - started

        assert await held_for(b"GET /healthz HTTP/1.1\r\nHost: x\r\n") < 10
        assert await held_for(b"") < 10
        async with gw.client("web") as http, http.stream("GET", "/v1/jobs/gw-slow/events") as stream:
            started, beats = time.monotonic(), 0
            async for line in stream.aiter_lines():
                beats += line == ": heartbeat"
                if time.monotonic() - started > 2.5:
                    break
        assert beats >= 3  # still streaming well past the request limit
