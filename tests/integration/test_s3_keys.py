"""Keys survive the whole pipeline byte for byte on a real S3 server: upload -> variant -> export
for names a mock got wrong (`?` cut the key, `%41` decoded twice, so two sources became one)."""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path

from services import samples, stages
from shared import bus
from shared import messages as m
from shared.exportplan import NameRegistry, default_name
from shared.runtime import Services
from tests.helpers import asset_event, download, eventually, export_event, final_job, running, zip_tools_accept
from tests.integration.test_export_flow import read_archive

PREFIX = "uploads/rt/"
LONG = "k" * (900 - len(PREFIX) - len(".jpg")) + ".jpg"  # a 900-byte key, one segment
NAMES = [
    "what?.jpg", "a?1.jpg", "a?2.jpg", "x#y.jpg", "#hash.jpg", "100%41.jpg", "100A.jpg", "%2F%25.jpg",
    "a+b.jpg", "a b.jpg", " lead and trail .jpg", "my..photo.jpg", "..dots.jpg", "dir..x/in.jpg",
    unicodedata.normalize("NFC", "café.jpg"), unicodedata.normalize("NFD", "café.jpg"), "日本語 ü.jpg", LONG,
]


async def test_tricky_keys_round_trip_through_upload_variant_and_export(services: Services, tmp_path: Path) -> None:
    keys = [PREFIX + name for name in NAMES]
    assert len(set(keys)) == len(keys) and len((PREFIX + LONG).encode()) == 900
    sources = {key: samples.photo(48 + 4 * i, 32, seed=i) for i, key in enumerate(keys)}  # each one distinct
    for key, data in sources.items():
        await services.storage.put_bytes(key, data, "image/jpeg")
    assert sorted(await services.storage.list_keys(PREFIX)) == sorted(keys)  # nothing merged, nothing renamed

    jobs = {key: f"rt-{i}" for i, key in enumerate(keys)}
    async with running(services, stages.load_all()):
        for key, job in jobs.items():
            await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(key, event_id=job, presets=["thumb"]))
        done = {key: await eventually(lambda j=job: final_job(services, j), timeout=90) for key, job in jobs.items()}

        for i, (key, job) in enumerate(done.items()):
            assert job.status == "ready", (key, job.errors)
            assert job.source_key == key
            source = job.parts["variant"].source
            assert source is not None and (source.width, source.bytes) == (48 + 4 * i, len(sources[key])), key
            assert [o.key for o in job.outputs] == [f"variants/{jobs[key]}/thumb.webp"]
        assert len(await services.storage.list_keys("variants/rt-")) == len(keys)

        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("rt-export", prefix=PREFIX, name="tricky"))
        export = await eventually(lambda: final_job(services, "rt-export"), timeout=90)
    assert export.status == "ready", export.errors
    assert export.missing == [] and export.done == len(keys)

    path = tmp_path / "tricky.zip"
    assert export.url is not None
    await asyncio.to_thread(download, export.url, str(path))
    zip_tools_accept(str(path))
    contents, manifest, _ = read_archive(path)
    registry = NameRegistry()  # the names the upload stage plans, in listing (UTF-8 byte) order
    planned = {key: registry.add(default_name(key, PREFIX)) for key in sorted(keys, key=lambda k: k.encode())}
    assert {entry["key"]: entry["name"] for entry in manifest["files"]} == planned
    for key, name in planned.items():
        assert contents[name] == sources[key], key
