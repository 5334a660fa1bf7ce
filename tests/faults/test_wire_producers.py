"""JSON as other languages' producers write it, published with the plain NATS client: fields in
another order, CloudEvents extension attributes and unknown fields, a `time` with an offset, and
a UTF-8 byte order mark in front (what PowerShell's and .NET's file writers put there; `nats pub`
of such a file sends it). RFC 8259 lets a parser ignore the mark; it was refused as "not JSON
(invalid character (byte 0))", with no job record to find the answer in."""

from __future__ import annotations

from functools import partial

from services import samples, stages
from shared import messages as m
from shared.runtime import Services
from tests.helpers import eventually, final_job, running

BOM = b"\xef\xbb\xbf"


def event(event_id: str, content_type: str = "application/json; charset=utf-8") -> bytes:
    """`datacontenttype` with the parameter HTTP-minded SDKs add: it was refused ("Expected
    `str` matching 'application/json'"), as if the data were not JSON."""
    return (b'{"data": {"presets": ["thumb"], "key": "uploads/p.jpg"}, "traceparent": "00-0af7651916cd43dd-01", '
            b'"time": "2026-11-30T09:15:00.5+05:30", "source": "powershell", "type": "jetmedia.asset.uploaded.v1", '
            b'"datacontenttype": "' + content_type.encode() + b'", '
            b'"id": "' + event_id.encode() + b'", "specversion": "1.0", "extra": {"nested": [1, 2, {"x": null}]}}\r\n')


async def test_json_as_other_producers_write_it_runs(services: Services) -> None:
    await services.storage.put_bytes("uploads/p.jpg", samples.photo(64, 48))
    async with running(services, [stages.load(n) for n in ("upload", "variant", "finalize")]):
        await services.nc.publish(m.UPLOAD_ASSET, event("wp-plain"), headers={"Nats-Msg-Id": "wp-plain"})
        await services.nc.publish(m.UPLOAD_ASSET, BOM + event("wp-bom"), headers={"Nats-Msg-Id": "wp-bom"})
        jobs = [await eventually(partial(final_job, services, job), timeout=30) for job in ("wp-plain", "wp-bom")]
    assert [(job.status, [out.preset for out in job.outputs]) for job in jobs] == [("ready", ["thumb"])] * 2, jobs


async def test_data_that_is_not_json_is_refused_with_the_reason(services: Services) -> None:
    async with running(services, [stages.load("upload")]):
        await services.nc.publish(m.UPLOAD_ASSET, event("wp-xml", "application/xml"), headers={"Nats-Msg-Id": "wp-xml"})
        job = await eventually(partial(final_job, services, "wp-xml"), timeout=30)
    assert job.status == "failed" and "datacontenttype" in job.errors[-1].reason, job.errors
