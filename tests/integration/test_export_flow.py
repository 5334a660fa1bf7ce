"""The export flow end to end on a real nats-server and S3: request -> chunk -> streamed ZIP ->
presigned URL, checked with three unzip implementations and against the sources' sha256."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import zipfile
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from services import chunk, cleanup, samples, stages
from services.finalize.export import finalize_export
from shared import bus
from shared import messages as m
from shared.exportplan import chunk_key
from shared.jobs import new_job
from shared.runtime import Context, Reject, Services
from tests.helpers import download, eventually, export_event, final_job, running, stream_events, zip_tools_accept

EXPORT_STAGES = ("upload", "chunk", "finalize")


def export_stages() -> list:  # type: ignore[type-arg]
    return [stages.load(name) for name in EXPORT_STAGES]


async def put_mixed_sources(services: Services, count: int, prefix: str = "src/") -> dict[str, bytes]:
    """`count` small objects of mixed kinds: JPEG/PNG (stored), text/JSON/CSV (deflated), random
    bytes uploaded without a CRC (level-0 deflate), empty files."""
    rng = random.Random(7)
    photos = [samples.photo(160 + 8 * i, 120, seed=i) for i in range(6)]
    png = samples.png_with_alpha(64, 48)
    sources: dict[str, bytes] = {}
    no_crc: set[str] = set()
    for i in range(count):
        kind = i % 6
        if kind == 0:
            key, data = f"{prefix}photos/p{i}.jpg", photos[i % len(photos)] + i.to_bytes(4, "big")
        elif kind == 1:
            key, data = f"{prefix}icons/i{i}.png", png
        elif kind == 2:
            text = f"note {i}: " + "lorem ipsum dolor sit amet " * rng.randint(1, 300)
            key, data = f"{prefix}notes/n{i}.txt", text.encode()
        elif kind == 3:
            values = list(range(rng.randint(0, 500)))
            key, data = f"{prefix}data/d{i}.json", json.dumps({"i": i, "values": values}).encode()
        elif kind == 4:
            key, data = f"{prefix}blobs/b{i}.bin", rng.randbytes(rng.randint(1, 200_000))
            no_crc.add(key)
        else:
            key, data = f"{prefix}empty/e{i}.csv", b"" if i % 12 == 5 else b"a,b\n1,2\n" * rng.randint(1, 50)
        sources[key] = data

    async def put(key: str) -> None:
        if key in no_crc:
            await services.storage.client.put_object(Bucket=services.storage.bucket, Key=key, Body=sources[key])
        else:
            await services.storage.put_bytes(key, sources[key])

    keys = list(sources)
    for start in range(0, len(keys), 25):
        await asyncio.gather(*(put(key) for key in keys[start:start + 25]))
    return sources


def read_archive(path: Path) -> tuple[dict[str, bytes], dict, zipfile.ZipFile]:  # type: ignore[type-arg]
    archive = zipfile.ZipFile(path)
    contents = {info.filename: archive.read(info) for info in archive.infolist()}
    manifest = json.loads(contents["manifest.json"])
    return contents, manifest, archive


async def test_few_hundred_mixed_objects_become_one_verified_zip(services: Services, tmp_path: Path) -> None:
    sources = await put_mixed_sources(services, 300)
    keys = [*sources, "src/photos/deleted-before-export.jpg"]
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-mixed", keys=keys, name="holiday"))
        job = await eventually(lambda: final_job(services, "exp-mixed"), timeout=120)

    assert job.status == "ready", job.errors
    assert (job.done, job.total, job.chunks, job.chunks_counted) == (301, 301, 4, [0, 1, 2, 3])
    assert job.missing == ["src/photos/deleted-before-export.jpg"] and job.missing_count == 1
    assert job.bytes == sum(len(d) for d in sources.values())
    assert [p.key for p in job.exports] == ["exports/exp-mixed/holiday.zip"]
    assert job.expires is not None and job.expires - job.updated > timedelta(hours=11)

    path = tmp_path / "holiday.zip"
    assert job.url is not None
    size = await asyncio.to_thread(download, job.url, str(path))
    assert size == job.exports[0].bytes
    zip_tools_accept(str(path))
    assert b"PK\x06\x06" not in path.read_bytes()  # small archive: no Zip64 records at all

    contents, manifest, archive = read_archive(path)
    names = {key: key.rsplit("/", 1)[-1] for key in sources}  # keys in one list: named by their last segment
    assert set(contents) == {*names.values(), "README.txt", "manifest.json"}
    for key, data in sources.items():
        assert contents[names[key]] == data, key
    by_name = {entry["name"]: entry for entry in manifest["files"]}
    for key, data in sources.items():
        entry = by_name[names[key]]
        assert (entry["key"], entry["size"], entry["sha256"]) == (key, len(data), hashlib.sha256(data).hexdigest())
    assert manifest["missing"] == [{"key": "src/photos/deleted-before-export.jpg", "name": "deleted-before-export.jpg"}]

    kinds = {info.filename.rsplit(".", 1)[-1]: info.compress_type for info in archive.infolist()}
    assert kinds["jpg"] == zipfile.ZIP_STORED and kinds["png"] == zipfile.ZIP_STORED
    assert kinds["txt"] == kinds["json"] == kinds["bin"] == zipfile.ZIP_DEFLATED
    assert {e["compression"] for e in manifest["files"] if e["name"].endswith(".bin")} == {"stored-blocks"}
    assert b"holiday.zip" in contents["README.txt"] and b"manifest.json" in contents["README.txt"]
    assert all(info.flag_bits & 0x800 for info in archive.infolist())  # UTF-8 names flagged

    ready = [e for e in await stream_events(services, "JM_EVENTS") if isinstance(e, m.ExportReady)]
    assert len(ready) == 1 and ready[0].data.url == job.url and ready[0].data.files == 300
    assert ready[0].data.missing_count == 1
    assert await services.storage.open_multipart_uploads("exports/") == []


async def test_prefix_export_splits_into_numbered_parts_with_an_index(services: Services, tmp_path: Path) -> None:
    for i in range(6):
        await services.storage.put_bytes(f"big/f{i}.bin", os.urandom(300_000 + i))
    await services.storage.put_bytes("other/not-me.txt", b"outside the prefix")
    services.settings = services.settings.replace(export_part_bytes=700_000)
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-parts", prefix="big/"))
        job = await eventually(lambda: final_job(services, "exp-parts"), timeout=60)

    assert job.status == "ready", job.errors
    assert [p.name for p in job.exports] == [f"export-exp-parts.part0{i}.zip" for i in (1, 2, 3)]
    assert [p.files for p in job.exports] == [2, 2, 2]
    assert job.url is not None
    index = json.loads(await asyncio.to_thread(lambda: __import__("urllib.request").request.urlopen(job.url).read()))
    assert [p["key"] for p in index["parts"]] == [p.key for p in job.exports]
    seen: list[str] = []
    for n, part in enumerate(index["parts"], start=1):
        path = tmp_path / part["name"]
        await asyncio.to_thread(download, part["url"], str(path))
        zip_tools_accept(str(path))
        contents, manifest, _ = read_archive(path)
        assert (manifest["part"], manifest["parts"]) == (n, 3)
        seen += [e["name"] for e in manifest["files"]]
        assert b"Part %d of 3" % n in contents["README.txt"]
    assert seen == [f"f{i}.bin" for i in range(6)]


async def test_hostile_names_end_up_safe_and_unique(services: Services, tmp_path: Path) -> None:
    await services.storage.put_bytes("h/one.txt", b"one")
    await services.storage.put_bytes("h/two.txt", b"two")
    wanted = ["../../etc/passwd", "/abs", "a\\b", "x" * 400 + ".txt", "dup.txt", "dup.txt", "DUP.txt",
              "café/日本語.txt", "\x1b[31mred\x00.txt", "evil\u202egnp.exe", "con.txt", "README.txt", "dup.txt/inner"]
    items = [m.ExportItem(key="h/one.txt" if i % 2 else "h/two.txt", name=name) for i, name in enumerate(wanted)]
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-hostile", items=items))
        job = await eventually(lambda: final_job(services, "exp-hostile"), timeout=60)
    assert job.status == "ready", job.errors

    path = tmp_path / "hostile.zip"
    assert job.url is not None
    await asyncio.to_thread(download, job.url, str(path))
    zip_tools_accept(str(path))
    contents, manifest, _ = read_archive(path)
    names = [e["name"] for e in manifest["files"]]
    assert names[:3] == ["etc/passwd", "abs", "a/b"]
    assert names[3].endswith(".txt") and len(names[3].encode()) <= 200
    assert names[4:8] == ["dup.txt", "dup (1).txt", "DUP (2).txt", "café/日本語.txt"]
    assert names[8:13] == ["[31mred.txt", "evilgnp.exe", "_con.txt", "README (1).txt", "dup.txt (1)/inner"]
    assert len({n.casefold() for n in contents}) == len(contents) == len(wanted) + 2

    out = tmp_path / "unpacked"
    out.mkdir()
    await asyncio.to_thread(subprocess.run, ["unzip", "-q", str(path), "-d", str(out)], check=True, timeout=60)
    unpacked = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert len(unpacked) == len(contents)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))


async def test_bad_requests_fail_with_a_reason(services: Services) -> None:
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-empty", prefix="nothing-here/"))
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-mp3", keys=["a"], transform="as-mp3"))
        empty = await eventually(lambda: final_job(services, "exp-empty"))
        mp3 = await eventually(lambda: final_job(services, "exp-mp3"))
    assert empty.status == "failed" and "nothing to export" in empty.errors[-1].reason
    assert mp3.status == "failed" and "transform 'as-mp3' is not available" in mp3.errors[-1].reason


async def test_a_redelivered_chunk_is_never_counted_twice(services: Services) -> None:
    """Run the chunk handler as a redelivery would: twice per chunk, in any order."""
    for i in range(4):
        await services.storage.put_bytes(f"r/{i}.txt", b"x" * (i + 1))
    await services.jobs.create(new_job("exp-redo", "export", status="running", stage="chunk", total=4, chunks=2))
    requests = [
        m.ChunkRequested(id=f"exp-redo:chunk:{n}", subject="exp-redo", data=m.ChunkRequestedData(
            job="exp-redo", chunk=n, bucket=services.storage.bucket,
            items=[m.ExportItem(key=f"r/{i}.txt", name=f"{i}.txt") for i in (2 * n, 2 * n + 1)]))
        for n in (0, 1)
    ]
    ctx = Context(services, "chunk", "exp-redo", delivery=2)
    assert await chunk.handle(requests[0], ctx) == []
    assert await chunk.handle(requests[0], ctx) == []
    job = await services.jobs.get("exp-redo")
    assert job is not None and (job.done, job.bytes, job.chunks_counted) == (2, 3, [0])
    first = await chunk.handle(requests[1], ctx)
    again = await chunk.handle(requests[1], ctx)  # the completing chunk redelivered: same finalize id
    late = await chunk.handle(requests[0], ctx)  # any other chunk: nothing
    assert [e.event.id for e in first] == [e.event.id for e in again] == ["exp-redo:finalize-export"]
    assert late == []
    job = await services.jobs.get("exp-redo")
    assert job is not None and (job.done, job.bytes, job.chunks_counted, job.finalize_by) == (4, 10, [0, 1], 1)
    assert await services.jobs.get_raw(chunk_key("exp-redo", 1)) is not None


async def test_cleanup_deletes_expired_exports(services: Services) -> None:
    await services.storage.put_bytes("c/a.txt", b"a")
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-old", keys=["c/a.txt"]))
        job = await eventually(lambda: final_job(services, "exp-old"))
    assert job.status == "ready" and job.expires is not None
    assert (await cleanup.sweep(services, now=job.expires - timedelta(seconds=1))).expired == 0
    assert await services.storage.list_keys("exports/exp-old/") == ["exports/exp-old/export-exp-old.zip"]

    swept = await cleanup.sweep(services, now=job.expires + timedelta(seconds=1))
    assert (swept.expired, swept.deleted) == (1, 1)
    assert await services.storage.list_keys("exports/exp-old/") == []
    expired = await services.jobs.get("exp-old")
    assert expired is not None and expired.status == "expired" and expired.url is None
    assert await services.jobs.get_raw(chunk_key("exp-old", 0)) is None
    assert (await cleanup.sweep(services, now=job.expires + timedelta(days=2))).expired == 0  # idempotent


async def test_cancel_request_message_cancels_the_job(services: Services) -> None:
    await services.jobs.create(new_job("exp-stop", "export", status="running", stage="chunk"))
    cancel = m.CancelRequested(id="stop-1", data=m.CancelRequestedData(job="exp-stop"))
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_CANCEL, cancel)
        job = await eventually(lambda: final_job(services, "exp-stop"))
    assert job.status == "cancelled"
    assert msgspec.json.decode(m.encode(cancel))["type"] == "jetmedia.job.cancel.v1"


async def test_sources_that_change_or_vanish_after_the_chunk_stage(services: Services, tmp_path: Path) -> None:
    """Between HEAD (chunk) and GET (finalize): a deleted source is listed as missing; a source
    rewritten with other bytes fails the export clearly instead of producing a corrupt member."""
    for name in ("keep", "gone", "edit"):
        await services.storage.put_bytes(f"v/{name}.jpg", os.urandom(50_000))
    await services.jobs.create(new_job("exp-v", "export", status="running", stage="chunk", total=3, chunks=1,
                                       archive="v"))
    request = m.ChunkRequested(id="exp-v:chunk:0", subject="exp-v", data=m.ChunkRequestedData(
        job="exp-v", chunk=0, bucket=services.storage.bucket,
        items=[m.ExportItem(key=f"v/{n}.jpg", name=f"{n}.jpg") for n in ("keep", "gone")]))
    [emit] = await chunk.handle(request, Context(services, "chunk", "exp-v", 1))
    assert isinstance(emit.event, m.ExportFinalize)
    await services.storage.delete("v/gone.jpg")
    ctx = Context(services, "finalize", "exp-v", 1)
    await finalize_export(emit.event, ctx)
    job = await services.jobs.get("exp-v")
    assert job is not None and job.status == "ready" and job.missing == ["v/gone.jpg"]
    assert job.url is not None
    await asyncio.to_thread(download, job.url, str(tmp_path / "v.zip"))
    _, manifest, _ = read_archive(tmp_path / "v.zip")
    assert [e["name"] for e in manifest["files"]] == ["keep.jpg"]
    assert manifest["missing"] == [{"key": "v/gone.jpg", "name": "gone.jpg"}]

    await services.jobs.create(new_job("exp-e", "export", status="running", stage="chunk", total=1, chunks=1))
    request = m.ChunkRequested(id="exp-e:chunk:0", subject="exp-e", data=m.ChunkRequestedData(
        job="exp-e", chunk=0, bucket=services.storage.bucket, items=[m.ExportItem(key="v/edit.jpg", name="e.jpg")]))
    [emit] = await chunk.handle(request, Context(services, "chunk", "exp-e", 1))
    await services.storage.put_bytes("v/edit.jpg", os.urandom(50_000))  # same size, other bytes
    with pytest.raises(Reject, match=r"v/edit\.jpg changed while the export ran"):
        await finalize_export(emit.event, Context(services, "finalize", "exp-e", 1))
    assert await services.storage.open_multipart_uploads("exports/exp-e/") == []
    assert await services.storage.list_keys("exports/exp-e/") == []


async def test_cleanup_removes_leftovers_of_cancelled_and_unknown_jobs(services: Services) -> None:
    await services.jobs.create(new_job("exp-gone", "export", status="cancelled"))
    await services.storage.put_bytes("exports/exp-gone/a.zip", b"left behind")
    await services.storage.put_bytes("exports/nobody/b.zip", b"orphan")
    await services.jobs.create(new_job("exp-live", "export", status="running", stage="finalize"))
    live = services.storage.multipart("exports/exp-live/live.zip")
    await live.start()
    dead = services.storage.multipart("exports/exp-gone/a.zip")
    await dead.start()

    swept = await cleanup.sweep(services)
    assert (swept.deleted, swept.aborted) == (1, 1)  # the orphan is young: kept for now
    assert await services.storage.list_keys("exports/") == ["exports/nobody/b.zip"]
    still_open = await services.storage.open_multipart_uploads("exports/")
    assert [key for key, _ in still_open] == ["exports/exp-live/live.zip"]

    later = await cleanup.sweep(services, now=m.now() + timedelta(days=2))
    assert (later.deleted, later.expired) == (1, 0)
    assert await services.storage.list_keys("exports/") == []
    await live.abort()


async def test_members_keep_their_sources_dates(services: Services, tmp_path: Path) -> None:
    """Unpacked files keep the dates S3 has for them (every member had the export's own date: a
    photo archive lost every file's date); README and manifest carry the export's."""
    for name in ("old.txt", "new.txt"):
        await services.storage.put_bytes(f"dates/{name}", name.encode())
    await asyncio.sleep(2.5)  # the export starts later than the sources were written
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-dates", prefix="dates/"))
        job = await eventually(lambda: final_job(services, "exp-dates"), timeout=60)
    assert job.status == "ready" and job.url is not None, job.errors
    path = tmp_path / "dates.zip"
    await asyncio.to_thread(download, job.url, str(path))
    stamps = {info.filename: _unix_time(info) for info in zipfile.ZipFile(path).infolist()}
    for name in ("old.txt", "new.txt"):
        head = await services.storage.head(f"dates/{name}")
        assert head is not None and head.modified is not None
        assert stamps[name] == int(head.modified.timestamp()), name
    assert stamps["README.txt"] == stamps["manifest.json"] == int(job.created.timestamp())
    assert stamps["README.txt"] >= stamps["new.txt"] + 2


def _unix_time(info: zipfile.ZipInfo) -> int:
    """The member's modification time from its extended-timestamp field (0x5455, UTC seconds)."""
    extra = info.extra
    while len(extra) >= 4:
        tag, size = int.from_bytes(extra[:2], "little"), int.from_bytes(extra[2:4], "little")
        if tag == 0x5455 and extra[4] & 1:
            return int.from_bytes(extra[5:9], "little")
        extra = extra[4 + size:]
    raise AssertionError(f"{info.filename}: no extended timestamp")


async def test_the_whole_bucket_leaves_jetmedias_own_archives_out(services: Services, tmp_path: Path) -> None:
    """`"prefix": ""` archived every earlier export, and the outputs of exports still running
    (which cleanup may delete mid-export); named by their own prefix, archives are exported."""
    await services.storage.put_bytes("mine/a.txt", b"a")
    await services.storage.put_bytes("exports/exp-old/old.zip", b"PK\x05\x06" + b"\x00" * 18)
    async with running(services, export_stages()):
        for job_id, prefix in (("exp-all", ""), ("exp-archives", "exports/exp-old/")):
            await bus.publish(services.js, m.UPLOAD_EXPORT, export_event(job_id, prefix=prefix))
        jobs = [await eventually(lambda j=j: final_job(services, j), timeout=60) for j in ("exp-all", "exp-archives")]
    assert [(job.status, job.total) for job in jobs] == [("ready", 1), ("ready", 1)], [job.errors for job in jobs]
    for job, member in zip(jobs, ("a.txt", "old.zip"), strict=True):
        assert job.url is not None
        path = tmp_path / f"{job.id}.zip"
        await asyncio.to_thread(download, job.url, str(path))
        assert member in zipfile.ZipFile(path).namelist(), job.id


async def test_an_object_asked_for_twice_is_archived_once(services: Services, tmp_path: Path) -> None:
    """Twice in `keys`, and once more under `prefix`: one member (it was `a.txt` and `a (1).txt`,
    the same bytes); an `items` entry names its own copy and keeps it."""
    for name in ("a.txt", "b.txt"):
        await services.storage.put_bytes(f"twice/{name}", name.encode())
    request = {"keys": ["twice/a.txt", "twice/a.txt"], "prefix": "twice/",
               "items": [m.ExportItem(key="twice/a.txt", name="copy of a.txt")]}
    async with running(services, export_stages()):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("exp-twice", **request))
        job = await eventually(lambda: final_job(services, "exp-twice"), timeout=60)
    assert job.status == "ready" and job.total == 3 and job.url is not None, job.errors
    path = tmp_path / "twice.zip"
    await asyncio.to_thread(download, job.url, str(path))
    assert sorted(zipfile.ZipFile(path).namelist()) == ["README.txt", "a.txt", "b.txt", "copy of a.txt",
                                                         "manifest.json"]
