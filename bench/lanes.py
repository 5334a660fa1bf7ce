"""Priority lanes: does a person's photo stay fast while a bulk export runs?

One embedded stack (nats-server + SeaweedFS), the stages upload, chunk, variant and finalize in
this process. For each mode (lanes on, then `JETMEDIA_LANES=false`: everything in one FIFO lane):

  idle    N single photos submitted one at a time on an idle pipeline (each waits for its
          asset.ready): the publish → ready latency a person gets when nothing else runs;
  loaded  an export of B images with transform=display (bulk by default: chunk fans each item
          out to the variant stage) is submitted, then the same N photos one every --pace
          seconds while it runs: their publish → ready latency, and when the export is ready.

The target (issue 15): loaded p95 ≤ 2× idle p95 with lanes; the bulk export still finishes.

    .venv/bin/python bench/lanes.py [--bulk 300] [--photos 20] [--pace 0.5] [--size 2000x1500]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from prometheus_client import REGISTRY
from rich.console import Console
from rich.table import Table

from services import samples, stages
from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.devstack import EmbeddedStack
from shared.runtime import Services, run_stages

STAGES = ("upload", "chunk", "variant", "finalize")


class Waiter:
    """asset.ready / export.ready seen on a core subscription (the events stream stores the same
    publish): job id -> monotonic time it arrived."""

    def __init__(self) -> None:
        self.ready: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def on_event(self, msg: Msg) -> None:
        event = m.decode(msg.data)
        job = m.job_of(event)
        if job is not None:
            self.ready[job] = time.monotonic()
            self.changed.set()

    async def until(self, jobs: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not jobs <= self.ready.keys():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not ready within {timeout:.0f} s: {sorted(jobs - self.ready.keys())[:5]}")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                continue


async def photo(services: Services, waiter: Waiter, job: str, key: str, wait: bool) -> float:
    """Submit one photo; with `wait`, return its publish → ready seconds."""
    sent = time.monotonic()
    await bus.publish(services.js, m.UPLOAD_ASSET, m.AssetUploaded(
        id=job, source="bench", time=m.now(), data=m.AssetUploadedData(key=key, bucket="bench")))
    if wait:
        await waiter.until({job}, 300)
        return waiter.ready[job] - sent
    return sent


async def mode(settings: Settings, label: str, args: argparse.Namespace, sources: list[str],
               photos: list[str]) -> dict[str, Any]:
    async with Services.open(settings, name=f"bench-lanes-{label}") as services:
        waiter = Waiter()
        subs = [await services.nc.subscribe(subject, cb=waiter.on_event)
                for subject in (m.EVENTS_ASSET_READY, m.EVENTS_EXPORT_READY, m.EVENTS_JOB_FAILED)]
        stopping = asyncio.Event()
        workers = asyncio.create_task(run_stages(services, [stages.load(name) for name in STAGES], stopping))
        try:
            for n in range(2):  # warm up: imports, pools, connections
                await photo(services, waiter, f"{label}-warm-{n}", photos[n % len(photos)], wait=True)
            idle = [await photo(services, waiter, f"{label}-idle-{n}", key, wait=True) for n, key in enumerate(photos)]

            export_job = f"{label}-export"
            started = time.monotonic()
            await bus.publish(services.js, m.UPLOAD_EXPORT, m.ExportRequested(
                id=export_job, source="bench", time=m.now(),
                data=m.ExportRequestedData(keys=sources, bucket="bench", transform="display")))
            await asyncio.sleep(args.head_start)  # the bulk items are queued and running
            before = waits()
            sent: dict[str, float] = {}
            for n, key in enumerate(photos):
                job = f"{label}-loaded-{n}"
                sent[job] = await photo(services, waiter, job, key, wait=False)
                await asyncio.sleep(args.pace)
            await waiter.until(set(sent), 900)
            photos_done = time.monotonic()
            after = waits()
            waited = {key: ((after[key][0] - before[key][0]) / (after[key][1] - before[key][1]))
                      for key in after if after[key][1] > before[key][1]}
            await waiter.until({export_job}, 1800)
            export_seconds = waiter.ready[export_job] - started
            record = await services.jobs.get(export_job)
            assert record is not None and record.status == "ready", f"export ended {record and record.status}"
            loaded = [waiter.ready[job] - at for job, at in sent.items()]
            bulk_left = waiter.ready[export_job] > photos_done
        finally:
            stopping.set()
            await workers
            for sub in subs:
                await sub.unsubscribe()
    return {"mode": label, "idle": idle, "loaded": loaded, "export_seconds": export_seconds,
            "export_outlived_photos": bulk_left, "waited": waited}


def waits() -> dict[tuple[str, str], tuple[float, float]]:
    """(stage, lane) -> (seconds waited in the stream, messages) so far, from the runtime's histogram."""
    out = {}
    for stage in STAGES:
        for lane in bus.LANES:
            labels = {"stage": stage, "lane": lane}
            out[stage, lane] = (REGISTRY.get_sample_value("jetmedia_queue_wait_seconds_sum", labels) or 0.0,
                                REGISTRY.get_sample_value("jetmedia_queue_wait_seconds_count", labels) or 0.0)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bulk", type=int, default=300, help="images in the bulk export (transform=display)")
    parser.add_argument("--photos", type=int, default=20, help="single photos submitted one by one")
    parser.add_argument("--pace", type=float, default=0.5, help="seconds between loaded submissions")
    parser.add_argument("--head-start", type=float, default=3.0, help="seconds the export runs before the photos")
    parser.add_argument("--size", default="2000x1500", help="photo size (the bulk images and the single photos)")
    parser.add_argument("--modes", default="lanes,one-lane", help="lanes and/or one-lane (JETMEDIA_LANES=false)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="jm-lanes-") as tmp, EmbeddedStack(Path(tmp)) as stack:
        env = {k.removeprefix("JETMEDIA_").lower(): v for k, v in stack.env().items()}
        base = Settings.from_env({}, **env, bucket="bench", metrics_port=0, data_dir=tmp, log_level="WARNING")
        async with Services.open(base, name="bench-lanes") as services:
            await services.storage.ensure_bucket()
            images = [samples.photo(width, height, seed=n) for n in range(4)]
            sources = [f"bulk/{n:04d}.jpg" for n in range(args.bulk)]
            photos = [f"photos/{n:02d}.jpg" for n in range(args.photos)]
            for n, key in enumerate(sources + photos):
                await services.storage.put_bytes(key, images[n % len(images)], content_type="image/jpeg")
        results = []
        for label in args.modes.split(","):
            settings = base.replace(lanes=(label == "lanes"))
            results.append(await mode(settings, label, args, sources, photos))

    table = Table(title=f"publish → asset.ready of {args.photos} photos ({args.size}), idle vs during an export "
                        f"of {args.bulk} images (transform=display), one process, stages {'+'.join(STAGES)}")
    for column in ("mode", "idle p50", "idle p95", "loaded p50", "loaded p95", "loaded p95 / idle p95",
                   "export s", "export still running after the photos"):
        table.add_column(column, justify="right")
    for row in results:
        idle, loaded = row["idle"], row["loaded"]
        table.add_row(row["mode"], f"{statistics.median(idle):.2f}", f"{p95(idle):.2f}",
                      f"{statistics.median(loaded):.2f}", f"{p95(loaded):.2f}", f"{p95(loaded) / p95(idle):.2f}x",
                      f"{row['export_seconds']:.1f}", "yes" if row["export_outlived_photos"] else "no")
    console = Console(width=160)
    console.print(table)
    for row in results:
        console.print(f"{row['mode']}: mean wait in each stage's stream while the photos ran (s): " + ", ".join(
            f"{stage}/{lane} {seconds:.2f}" for (stage, lane), seconds in sorted(row["waited"].items())))


if __name__ == "__main__":
    asyncio.run(main())
