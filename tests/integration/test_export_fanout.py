"""An export's transform fans out to the transcode stage and scales with its replicas.

Three kinds of process, as in production: one runs upload, chunk and finalize with no ffmpeg at all
(`JETMEDIA_FFMPEG` names a file that does not exist, PATH is empty), the others run transcode. 200
tiny recordings exported as MP3 (two chunks of 100): with one transcode worker it converts every
item; with two, both convert items; one of them SIGKILLed mid-export, its items come back to the
other, and the archive still holds every item once, each counted once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from services import stages
from services.transcode.ffmpeg import ffmpeg_exe
from services.transcode.samples import lavfi
from shared import bus
from shared import messages as m
from shared.exportitems import ChunkItems, items_key
from shared.exportplan import ChunkRecord, chunk_key
from shared.jobs import Job
from shared.runtime import Context, Emit, Services
from tests.helpers import download, eventually, export_event, final_job, processes_with, running, settings_env

ITEMS = 200
HALF = 40  # items the second transcode worker converts before its ffmpeg hangs
KEYS = [f"fan/take-{n:03d}.wav" for n in range(ITEMS)]


@contextlib.contextmanager
def worker(services: Services, log: Path, *stages: str,
           env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A `jetmedia worker` process logging to a file (a pipe nobody reads would block it)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", *stages],
                                env={**os.environ, **settings_env(services.settings), **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def script(path: Path, text: str) -> str:
    """An executable shell script (an ffmpeg stand-in); returns its path."""
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines()


def converted(log: Path, job: str) -> int:
    """Items of `job` this worker's transcode stage handled (the runtime logs one line each)."""
    return sum(1 for line in lines(log) if "stage=transcode" in line and f"job={job} " in line and "outcome=ok" in line)


async def ready_line(log: Path) -> bool:
    return any("worker ready" in line for line in lines(log))


async def export_mp3(services: Services, job_id: str, tmp_path: Path) -> tuple[Job, dict[str, Any]]:
    job: Job = await eventually(lambda: final_job(services, job_id), timeout=150)
    assert job.status == "ready", job.errors
    assert job.url is not None
    path = tmp_path / f"{job_id}.zip"
    await asyncio.to_thread(download, job.url, str(path))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        manifest = json.loads(archive.read("manifest.json"))
        first = archive.read(names[0]) if names[0].endswith(".mp3") else archive.read(names[1])
    # every item once: 200 MP3s named after their sources, each from its own source, nothing else
    assert sorted(names) == sorted([*(k.removeprefix("fan/").replace(".wav", ".mp3") for k in KEYS),
                                    "README.txt", "manifest.json"])
    assert sorted(e["key"] for e in manifest["files"]) == KEYS
    assert len({e["output"] for e in manifest["files"]}) == ITEMS
    assert manifest["missing"] == [] and manifest["untransformed"] == []
    assert first[:3] == b"ID3" or first[0] == 0xFF  # an MP3 (ID3 tag or frame sync), not the WAV
    # each item counted once: the counters add up, both chunks counted once, the fan-in records gone
    assert (job.done, job.total, job.chunks, job.chunks_counted) == (ITEMS, ITEMS, 2, [0, 1])
    assert job.untransformed_count == 0 and job.missing_count == 0
    for n in range(job.chunks):
        assert await services.jobs.get_raw(items_key(job_id, n)) is None
    return job, manifest


async def test_mp3_export_spreads_over_transcode_workers_and_survives_a_kill(services: Services,
                                                                            tmp_path: Path) -> None:
    wav = await asyncio.to_thread(lavfi, "wav", 0.3)
    for start in range(0, ITEMS, 25):
        await asyncio.gather(*(services.storage.put_bytes(key, wav) for key in KEYS[start:start + 25]))
    no_ffmpeg = {"JETMEDIA_FFMPEG": str(tmp_path / "no-such-ffmpeg"), "PATH": str(tmp_path / "empty")}
    release = tmp_path / "release"
    hanging = script(tmp_path / "ffmpeg-that-hangs", f"""#!/bin/sh
echo run >> "{tmp_path / 'runs'}"
if [ "$(wc -l < "{tmp_path / 'runs'}")" -gt {HALF} ]; then
  while [ ! -e "{release}" ]; do sleep 0.05; done
  exit 1
fi
exec "{ffmpeg_exe()}" "$@"
""")
    logs = {name: tmp_path / f"{name}.log" for name in ("pipeline", "one", "two")}

    try:
        with worker(services, logs["pipeline"], "upload", "chunk", "finalize", env=no_ffmpeg), \
                worker(services, logs["one"], "transcode") as one:
            # one transcode worker converts every item
            took = [time.monotonic()]
            await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("fan-1", prefix="fan/", transform="mp3"))
            await export_mp3(services, "fan-1", tmp_path)
            took[0] = time.monotonic() - took[0]
            assert converted(logs["one"], "fan-1") == ITEMS

            # two: both convert items; the second converts HALF items, then its ffmpeg hangs (two items in
            # flight, for sure) and it is SIGKILLed; the first takes those items over and finishes
            with worker(services, logs["two"], "transcode", env={"JETMEDIA_FFMPEG": hanging}) as two:
                await eventually(lambda: ready_line(logs["two"]), timeout=30)
                took.append(time.monotonic())
                await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("fan-2", prefix="fan/", transform="mp3"))

                async def both_busy_and_two_stuck() -> bool:
                    return (converted(logs["one"], "fan-2") >= HALF and converted(logs["two"], "fan-2") == HALF
                            and len(processes_with(hanging)) >= 2)

                await eventually(both_busy_and_two_stuck, timeout=90)
                two.send_signal(signal.SIGKILL)
                two.wait(10)
                release.touch()  # the hung "ffmpeg" children of the dead worker exit
                await export_mp3(services, "fan-2", tmp_path)
                took[1] = time.monotonic() - took[1]
            by_one, by_two = converted(logs["one"], "fan-2"), converted(logs["two"], "fan-2")
            assert (by_one, by_two) == (ITEMS - HALF, HALF)  # each item converted (to the end) once
            came_back = [line for line in lines(logs["one"]) if "stage=transcode job=fan-2 " in line
                         and "outcome=ok" in line and "delivery=2" in line]
            assert len(came_back) == 2  # the two items the killed worker held, after ack_wait
            assert one.poll() is None
    finally:
        release.touch()  # whatever happened, no hung "ffmpeg" outlives the test

    # the chunk process (no ffmpeg to run) handled every chunk at the first try and converted nothing
    chunks = [line for line in lines(logs["pipeline"]) if "stage=chunk job=" in line]
    assert len(chunks) == 4 and all("outcome=ok delivery=1" in line for line in chunks), chunks
    assert not any("stage=transcode" in line for line in lines(logs["pipeline"]))
    print(f"fan-1: {took[0]:.1f} s with one transcode worker; fan-2: {by_one} item(s) by the survivor, "
          f"{by_two} by the killed worker, {took[1]:.1f} s")


async def test_a_repeated_item_is_neither_converted_nor_counted_twice(services: Services, tmp_path: Path) -> None:
    """The transcode handler run on the same item twice (what a redelivery after a kill does): the
    second run finds the item counted and runs no ffmpeg; the last item completes the chunk once,
    and its repeat only re-sends the same finalize (same id: the server drops it)."""
    runs = tmp_path / "ffmpeg-runs"
    counting = script(tmp_path / "counting-ffmpeg", f'#!/bin/sh\necho run >> "{runs}"\nexec "{ffmpeg_exe()}" "$@"\n')
    settings = services.settings.replace(ffmpeg=counting)
    wav = await asyncio.to_thread(lavfi, "wav", 0.3)
    for key in ("rep/a.wav", "rep/b.wav"):
        await services.storage.put_bytes(key, wav)

    async with running(services, [stages.load("upload"), stages.load("chunk")]):  # items wait in JM_TRANSCODE
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("rep", prefix="rep/", transform="mp3"))
        raw = await eventually(lambda: services.jobs.get_raw(items_key("rep", 0)))
    assert raw is not None
    items = msgspec.json.decode(raw, type=ChunkItems)
    assert [s.key for s in items.sources] == ["rep/a.wav", "rep/b.wav"] and items.done == []

    transcode = stages.load("transcode")
    original = services.settings
    services.settings = settings
    try:
        async def deliver(index: int) -> list[Emit]:
            event = m.TranscodeRequested(id=f"rep-{index}", subject="rep", data=m.TranscodeRequestedData(
                job="rep", asset=f"export-item-0-{index}", bucket=settings.bucket, key=items.sources[index].key,
                media="audio", presets=["mp3"], export=m.ExportItemRef(chunk=0, index=index)))
            return list(await transcode.handle(event, Context(services, "transcode", "rep", 1)))

        assert await deliver(0) == [] and await deliver(0) == []
        assert runs.read_text().count("run") == 1  # the repeat converted nothing
        first, again = await deliver(1), await deliver(1)
    finally:
        services.settings = original
    assert runs.read_text().count("run") == 2
    assert [e.event.id for e in first] == [e.event.id for e in again] == ["rep:finalize-export"]
    job = await services.jobs.get("rep")
    assert job is not None and (job.done, job.chunks_counted, job.finalize_by) == (2, [0], 0)
    record = msgspec.json.decode(await services.jobs.get_raw(chunk_key("rep", 0)) or b"", type=ChunkRecord)
    assert [(s.source, s.name) for s in record.found] == [("rep/a.wav", "a.mp3"), ("rep/b.wav", "b.mp3")]
    assert await services.jobs.get_raw(items_key("rep", 0)) is None
