"""Keys the S3 server refuses to name, sent by a producer as raw JSON over plain NATS.

SeaweedFS answers a GET of `uploads/../x.jpg` (or a key with NUL) with `400 InvalidRequest`, and
the HEAD that should tell "missing" from "a fault" with a bare `400 Bad Request`. That HEAD read
as transient: the asset job sat `running` through five deliveries and failed with "gave up after
5 deliveries: ... HeadObject ... Bad Request", and an export naming such a key next to good ones
failed whole the same way. Now the asset fails at the first delivery saying S3 refuses the key,
and the export lists the key as missing and archives the rest.
"""

from __future__ import annotations

import json
import time
from functools import partial

from services import samples, stages
from shared import bus
from shared import messages as m
from shared.exportplan import unique_names
from shared.runtime import Services
from tests.helpers import eventually, final_job, running

REFUSED = ("uploads/../x.jpg", "uploads/a\x00b.jpg")


def raw(kind: str, event_id: str, data: object) -> bytes:
    return json.dumps({"data": data, "id": event_id, "type": kind, "source": "go-app", "specversion": "1.0"}).encode()


async def test_keys_s3_refuses_fail_at_once_and_an_export_lists_them_missing(services: Services) -> None:
    await services.storage.put_bytes("uploads/ok.jpg", samples.photo(64, 48))
    async with running(services, [stages.load(n) for n in ("upload", "chunk", "variant", "finalize")]):
        for n, key in enumerate(REFUSED):
            await services.js.publish(m.UPLOAD_ASSET, raw("jetmedia.asset.uploaded.v1", f"wk-{n}", {"key": key}),
                                      headers={bus.MSG_ID: f"wk-{n}"})
        await services.js.publish(m.UPLOAD_EXPORT, raw("jetmedia.export.requested.v1", "wk-export",
                                                       {"keys": [*REFUSED, "uploads/ok.jpg"]}),
                                  headers={bus.MSG_ID: "wk-export"})
        jobs = [await eventually(partial(final_job, services, f"wk-{n}"), timeout=30) for n in range(len(REFUSED))]
        export = await eventually(lambda: final_job(services, "wk-export"), timeout=30)

    for job, key in zip(jobs, REFUSED, strict=True):
        assert job.status == "failed", job
        reason = job.errors[-1].reason
        assert reason.startswith(f"S3 refuses to read s3://jetmedia-test/{key} (InvalidRequest"), reason
    letters = [e for e in await bus.read_stream(services.js, "JM_DLQ") if isinstance(e, m.DeadLetter)]
    assert sorted(letter.data.job or "" for letter in letters) == ["wk-0", "wk-1"]
    assert all(letter.data.permanent and letter.data.delivery_count == 1 for letter in letters)
    assert export.status == "ready" and export.missing_count == len(REFUSED), export


async def test_a_prefix_export_past_the_file_limit_stops_listing_at_the_limit(services: Services) -> None:
    """`"prefix": ""` on a bucket of millions listed every key before refusing; now the listing
    stops one past JETMEDIA_EXPORT_MAX_FILES (here 3)."""
    await services.storage.put_bytes("many/keep.txt", b"x")
    for n in range(5):
        await services.storage.put_bytes(f"many/{n}.txt", b"x")
    capped = services.settings.replace(export_max_files=3)
    async with Services.open(capped, name="capped") as stage_services, \
            running(stage_services, [stages.load("upload")]):
        await services.js.publish(m.UPLOAD_EXPORT, raw("jetmedia.export.requested.v1", "wk-many", {"prefix": "many/"}),
                                  headers={bus.MSG_ID: "wk-many"})
        job = await eventually(partial(final_job, services, "wk-many"), timeout=30)
    assert job.status == "failed"
    assert job.errors[-1].reason == "export names more than 3 objects, over the limit of 3 (JETMEDIA_EXPORT_MAX_FILES)"


def test_an_export_naming_one_key_20000_times_is_planned_in_a_blink() -> None:
    """Each copy of a name (or case variant of it) counted up from `(1)` again: 10,000 copies of
    `a.jpg` (40 KB of JSON) held the upload stage's event loop ~80 s, 100,000 for hours, with no
    heartbeats."""
    started = time.process_time()
    names = unique_names(["a.jpg"] * 20_000)
    assert time.process_time() - started < 10  # was ~330 s; now ~0.15 s
    assert names[:3] == ["a.jpg", "a (1).jpg", "a (2).jpg"] and names[-1] == "a (19999).jpg"
    assert len(set(names)) == 20_000
    variants = ["".join(c.upper() if n >> i & 1 else c for i, c in enumerate("abcdefghijklmnop")) + ".jpg"
                for n in range(20_000)]  # the same name on a case-insensitive disk: numbered too
    started = time.process_time()
    assert len({name.casefold() for name in unique_names(variants)}) == 20_000
    assert time.process_time() - started < 10  # was ~270 s
