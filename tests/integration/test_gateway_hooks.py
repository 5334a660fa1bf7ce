"""S3 event notifications into asset jobs, and the OpenAPI document of the whole API."""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from openapi_spec_validator import validate

from services import samples, stages
from shared.runtime import Services
from tests.gatewaykit import gateway
from tests.helpers import eventually, running


def notification(bucket: str, key: str, etag: str, event: str = "ObjectCreated:Put") -> dict[str, Any]:
    """What AWS S3 (and MinIO, Ceph RGW) POST to a webhook: the key URL-encoded, a space as `+`."""
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventTime": "2026-01-01T00:00:00Z",
        "eventName": event, "userIdentity": {"principalId": "someone"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "jetmedia",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": 1234, "eTag": etag,
                          "sequencer": "0055AED6DCD90281E5"}},
    }]}


async def test_a_notification_posted_twice_makes_one_job(services: Services) -> None:
    bucket = services.settings.bucket
    photo = samples.photo(320, 240)
    await services.storage.put_bytes("incoming/summer photo.jpg", photo)
    etag = (await services.storage.client.head_object(Bucket=bucket, Key="incoming/summer photo.jpg"))["ETag"]
    async with gateway(services.settings) as gw, gw.client("hook") as hook, gw.client("admin") as admin:
        before = (await services.js.stream_info("JM_UPLOAD")).state.last_seq
        first = await hook.post("/v1/hooks/s3", json=notification(bucket, "incoming/summer photo.jpg", etag))
        second = await hook.post("/v1/hooks/s3", json=notification(bucket, "incoming/summer photo.jpg", etag))
        assert first.status_code == second.status_code == 202, first.text
        assert first.json() == second.json()
        [job] = first.json()["jobs"]
        assert job["key"] == "incoming/summer photo.jpg" and first.json()["skipped"] == []
        assert (await services.js.stream_info("JM_UPLOAD")).state.last_seq == before + 1  # one message

        async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
            async def ready() -> dict[str, Any] | None:
                view: dict[str, Any] = (await admin.get(job["status_url"])).json()
                return view if view["status"] == "ready" else None

            view = await eventually(ready, timeout=60)
            # re-delivered after the job ended: still one job, nothing published
            third = await hook.post("/v1/hooks/s3", json=notification(bucket, "incoming/summer photo.jpg", etag))
            assert third.json()["jobs"] == [job]
        assert view["source_key"] == "incoming/summer photo.jpg" and view["attempt"] == 1
        assert (await services.js.stream_info("JM_UPLOAD")).state.last_seq == before + 1
        assert [j["id"] for j in (await admin.get("/v1/jobs")).json()["jobs"]] == [job["job_id"]]

        # a new version of the object (new eTag) is a new job; deletions, other prefixes and buckets are not
        other = await hook.post("/v1/hooks/s3", json=notification(bucket, "incoming/summer photo.jpg", '"abc"'))
        assert other.json()["jobs"][0]["job_id"] != job["job_id"]
        skipped = []
        for body in (notification(bucket, "incoming/x.jpg", '"1"', "ObjectRemoved:Delete"),
                     notification(bucket, "elsewhere/x.jpg", '"1"'), notification("another", "incoming/x.jpg", '"1"')):
            answer = (await hook.post("/v1/hooks/s3", json=body)).json()
            assert answer["jobs"] == []
            skipped += answer["skipped"]
        assert len(skipped) == 3 and "not an object creation" in skipped[0] and "hook prefixes" in skipped[1]
        # the token in the query (Ceph RGW's push endpoint sends no headers); no other POST takes it
        async with gw.client(None) as anonymous:
            in_query = await anonymous.post("/v1/hooks/s3", params={"access_token": gw.tokens["hook"]},
                                            json=notification(bucket, "incoming/summer photo.jpg", etag))
            assert in_query.status_code == 202 and in_query.json()["jobs"] == [job]
            assert (await anonymous.post("/v1/uploads", params={"access_token": gw.tokens["admin"]},
                                         json={"filename": "a"})).status_code == 401
        # S3's test event (no Records) is accepted and does nothing
        assert (await hook.post("/v1/hooks/s3", json={"Service": "Amazon S3", "Event": "s3:TestEvent"})).json() == {
            "jobs": [], "skipped": []}
        # an SNS or EventBridge envelope is not S3's notification: said so, not answered 202 doing nothing
        confirm = {"Type": "SubscriptionConfirmation", "MessageId": "m1", "Token": "t",
                   "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=t"}
        wrapped = {"Type": "Notification", "MessageId": "m2", "TopicArn": "arn:aws:sns:us-east-1:1:media",
                   "Message": json.dumps(notification(bucket, "incoming/y.jpg", '"2"'))}
        bridged = {"version": "0", "detail-type": "Object Created", "source": "aws.s3",
                   "detail": {"bucket": {"name": bucket}, "object": {"key": "incoming/y.jpg", "etag": "2"}}}
        published = (await services.js.stream_info("JM_UPLOAD")).state.last_seq
        for body, says in ((confirm, confirm["SubscribeURL"]), (wrapped, "raw message delivery"),
                           (bridged, "EventBridge event ('Object Created')")):
            refused = await hook.post("/v1/hooks/s3", json=body)
            assert refused.status_code == 422 and says in refused.json()["detail"], refused.text
            assert refused.json()["type"].endswith("not-an-s3-notification")
        assert (await services.js.stream_info("JM_UPLOAD")).state.last_seq == published  # nothing published


async def test_openapi_document_validates_and_lists_every_route(services: Services) -> None:
    async with gateway(services.settings) as gw, gw.client(None) as http:
        document = (await http.get("/openapi.json")).json()
        validate(document)  # OpenAPI 3.1, per openapi-spec-validator
        assert document["openapi"].startswith("3.1")
        paths = document["paths"]
        expected = {
            "/v1/uploads": {"post"}, "/v1/assets": {"post"}, "/v1/exports": {"post"}, "/v1/jobs": {"get"},
            "/v1/jobs/{job_id}": {"get", "delete"}, "/v1/jobs/{job_id}/retry": {"post"},
            "/v1/jobs/{job_id}/events": {"get"}, "/v1/hooks/s3": {"post"}, "/healthz": {"get", "head"},
        }
        assert {path: set(ops) for path, ops in paths.items()} == expected
        schemas = document["components"]["schemas"]
        for name in ("AssetUploadedData", "ExportRequestedData", "UploadRequest", "UploadTicket", "Accepted",
                     "JobView", "OutputView", "JobList", "S3Notification", "HookResult", "ProblemDetails"):
            assert any(key.endswith(name) for key in schemas), (name, sorted(schemas))

        def ref(op: dict[str, Any], where: str) -> str:
            content = op["requestBody"]["content"] if where == "body" else op["responses"][where]["content"]
            return str(next(iter(content.values()))["schema"].get("$ref", ""))

        assert ref(paths["/v1/assets"]["post"], "body").endswith("AssetUploadedData")
        assert ref(paths["/v1/exports"]["post"], "body").endswith("ExportRequestedData")
        assert ref(paths["/v1/assets"]["post"], "202").endswith("Accepted")
        assert ref(paths["/v1/jobs/{job_id}"]["get"], "200").endswith("JobView")
        assert ref(paths["/v1/jobs"]["get"], "200").endswith("JobList")
        assert ref(paths["/v1/hooks/s3"]["post"], "body").endswith("S3Notification")
        assert "text/event-stream" in paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
        for path, ops in expected.items():
            for method in ops:
                responses = paths[path][method]["responses"]
                if path != "/healthz":
                    assert {"401", "403", "429"} <= set(responses), (path, method)
                    assert "application/problem+json" in responses["401"]["content"]
                    assert paths[path][method]["security"], (path, method)
        idempotency = [p for p in paths["/v1/assets"]["post"]["parameters"] if p["name"] == "Idempotency-Key"]
        assert idempotency and idempotency[0]["in"] == "header"
        assert {"bearer", "access_token"} <= set(document["components"]["securitySchemes"])
        docs = await http.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
        assert len(assets) == 3 and all(url.startswith("/docs/assets/") for url in assets), assets  # no CDN
        for url in assets:
            served = await http.get(url)
            assert served.status_code == 200 and len(served.content) > 10_000, url
