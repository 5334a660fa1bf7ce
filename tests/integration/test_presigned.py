"""Presigned export links on a server that checks them: SigV4 in every region, plain HTTP fetches
the archive under its exact name, a tampered or expired link is refused."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request

import pytest

from services import stages
from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.runtime import Services
from shared.storage import Storage, content_disposition
from tests.helpers import eventually, export_event, final_job, running


def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    """GET with nothing but urllib: status, body, headers (an HTTP error is a status too)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


async def test_export_link_downloads_with_plain_http_and_refuses_tampering_and_expiry(services: Services) -> None:
    await services.storage.put_bytes("ps/one.txt", b"first file\n" * 100)
    await services.storage.put_bytes("ps/two.bin", bytes(range(256)) * 40)
    async with running(services, [stages.load(name) for name in ("upload", "chunk", "finalize")]):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("ps-1", prefix="ps/", name="hidden export ü"))
        job = await eventually(lambda: final_job(services, "ps-1"), timeout=60)
    assert job.status == "ready", job.errors
    assert job.url is not None and [p.name for p in job.exports] == ["hidden export ü.zip"]
    assert query(job.url)["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"

    status, body, headers = await asyncio.to_thread(fetch, job.url)
    assert status == 200 and body[:4] == b"PK\x03\x04"
    assert body == await services.storage.get_bytes(job.exports[0].key)
    assert headers["Content-Disposition"] == content_disposition("hidden export ü.zip")
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"hidden export u.zip\"; filename*=UTF-8''hidden%20export%20%C3%BC.zip")

    signature = query(job.url)["X-Amz-Signature"]
    changed = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = job.url.replace(f"X-Amz-Signature={signature}", f"X-Amz-Signature={changed}")
    assert tampered != job.url
    assert (await asyncio.to_thread(fetch, tampered))[0] == 403

    short = await services.storage.presign(job.exports[0].key, ttl=2, filename="hidden export ü.zip")
    assert (await asyncio.to_thread(fetch, short))[0] == 200
    await asyncio.sleep(3)
    assert (await asyncio.to_thread(fetch, short))[0] == 403


@pytest.mark.parametrize("region,endpoint", [
    ("us-east-1", None), ("eu-central-1", None), ("us-east-1", "stack"), ("eu-central-1", "stack"),
    ("auto", "https://example-account.r2.cloudflarestorage.com"),
])
async def test_presigned_urls_are_sigv4_for_every_region_and_endpoint(
    settings: Settings, region: str, endpoint: str | None,
) -> None:
    custom = settings.s3_endpoint if endpoint == "stack" else endpoint
    if endpoint is None:
        settings = settings.replace(s3_access_key="AKIDEXAMPLE", s3_secret_key="secret")
    async with Storage(settings.replace(s3_endpoint=custom, s3_region=region)) as storage:
        url = await storage.presign("exports/job/a b?.zip", filename="a b?.zip")
    params = query(url)
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256", url
    assert f"/{region}/s3/aws4_request" in params["X-Amz-Credential"]
    assert "AWSAccessKeyId" not in params and "Signature" not in params
    assert params["response-content-disposition"] == content_disposition("a b?.zip")
    if endpoint is None:
        assert urllib.parse.urlsplit(url).hostname in ("s3.amazonaws.com", f"s3.{region}.amazonaws.com")
    else:
        assert url.startswith(f"{custom}/{settings.bucket}/exports/job/a%20b%3F.zip?")
    if endpoint == "stack":  # the real server accepts the signature, whatever region signed it
        async with Storage(settings) as storage:
            await storage.put_bytes("exports/job/a b?.zip", b"zip bytes")
        status, body, _ = await asyncio.to_thread(fetch, url)
        assert (status, body) == (200, b"zip bytes")
