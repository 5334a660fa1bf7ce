"""Export throughput and memory: S3 -> ZIP -> S3 through the real pipeline vs a plain streamed
S3 copy of the same bytes (the ceiling), side by side in one run, at two export sizes.

- export: a child process runs the upload, chunk and finalize stages, publishes one
  `ExportRequested` for the sources and waits for `ready` (HEAD checks, the streamed ZIP into a
  multipart upload, the presigned URL: everything a user waits for).
- copy: a child process streams the same objects (GET) into one multipart upload (PUT), with the
  same 8 MiB parts: what any client-side S3 -> S3 pass of those bytes costs here.

Each run is its own process, so "peak RSS" is that run's high-water mark (VmHWM). Sources are
incompressible (like JPEG/MP4), uploaded with a CRC-32, so the archive stores them.

    .venv/bin/python bench/export.py [--sizes 0.5,2] [--object-mb 16] [--repeat 1]

Defaults take a few minutes against the embedded S3 (SeaweedFS). Any other S3 + NATS:
set JETMEDIA_NATS_URL / JETMEDIA_S3_* and pass --external.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services import stages  # noqa: E402
from shared import bus  # noqa: E402
from shared import messages as m  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.devstack import EmbeddedStack  # noqa: E402
from shared.runtime import Services, run_stages  # noqa: E402

MB = 1_000_000
MIB = 1024 * 1024
SOURCE_PREFIX = "bench-export/src/"


def source_key(i: int) -> str:
    return f"{SOURCE_PREFIX}{i:05d}.bin"


def cpu_seconds() -> float:
    """CPU time of this process, all threads: what a run costs, whatever else the machine does."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- the two children ---------------------------------------------------------------


async def child_export(settings: Settings, count: int, run: str) -> dict[str, float]:
    async with Services.open(settings, name="bench-export") as services:
        stopping = asyncio.Event()
        workers = asyncio.create_task(run_stages(services, [stages.load(n) for n in ("upload", "chunk", "finalize")],
                                                 stopping))
        job_id = f"bench-{run}"
        started, cpu = time.perf_counter(), cpu_seconds()
        event = m.ExportRequested(id=job_id, source="bench", time=m.now(), data=m.ExportRequestedData(
            keys=[source_key(i) for i in range(count)], name="bench"))
        await bus.publish(services.js, m.UPLOAD_EXPORT, event)
        while True:
            job = await services.jobs.get(job_id)
            if job is not None and job.final:
                break
            await asyncio.sleep(0.05)
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        stopping.set()
        await workers
        if job.status != "ready":
            raise SystemExit(f"export ended {job.status}: {job.errors}")
        for part in job.exports:
            await services.storage.delete(part.key)
        return {"seconds": elapsed, "cpu": cpu, "in": job.bytes, "out": sum(p.bytes for p in job.exports)}


async def child_copy(settings: Settings, count: int, run: str) -> dict[str, float]:
    async with Services.open(settings, name="bench-copy", layout=False) as services:
        storage = services.storage
        started, cpu = time.perf_counter(), cpu_seconds()
        upload = storage.multipart(f"bench-export/copy-{run}.bin")
        size = 0
        try:
            for i in range(count):
                async for piece in storage.iter_bytes(source_key(i), chunk=MIB):
                    await upload.write(piece)
                    size += len(piece)
            await upload.complete()
        except BaseException:
            await upload.abort()
            raise
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        await storage.delete(upload.key)
        return {"seconds": elapsed, "cpu": cpu, "in": size, "out": upload.bytes_written}


def child_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env()
    run = child_export if args.child == "export" else child_copy
    result = asyncio.run(run(settings, args.count, args.run))
    result["peak_rss"] = peak_rss()
    print(json.dumps(result), flush=True)


# --- the parent ---------------------------------------------------------------------------


async def upload_sources(settings: Settings, count: int, object_bytes: int) -> None:
    async with Services.open(settings, name="bench-setup") as services:
        await services.storage.ensure_bucket()
        existing = set(await services.storage.list_keys(SOURCE_PREFIX))
        todo = [i for i in range(count) if source_key(i) not in existing]
        for start in range(0, len(todo), 4):
            await asyncio.gather(*(services.storage.put_bytes(source_key(i), os.urandom(object_bytes))
                                   for i in todo[start:start + 4]))


def run_child(kind: str, count: int, run: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--count", str(count), "--run", run],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def parent_main(args: argparse.Namespace) -> None:
    sizes = [float(s) for s in args.sizes.split(",")]
    object_bytes = int(args.object_mb * MIB)
    counts = [max(1, round(size * 1000 * MB / object_bytes)) for size in sizes]
    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="jetmedia-bench-") as tmp:
        stack = None if args.external else EmbeddedStack(Path(tmp)).start()
        try:
            settings = Settings.from_env() if stack is None else Settings.from_env(
                {}, **{k.removeprefix("JETMEDIA_").lower(): v for k, v in stack.env().items()})
            settings = settings.replace(bucket=args.bucket, log_level="WARNING")
            env = {**os.environ, **(stack.env() if stack else {}), "JETMEDIA_BUCKET": args.bucket,
                   "JETMEDIA_LOG_LEVEL": "WARNING", "JETMEDIA_METRICS_PORT": "0"}
            console.print(f"uploading {max(counts)} x {args.object_mb:g} MiB sources ...")
            asyncio.run(upload_sources(settings, max(counts), object_bytes))
            rows = []
            for size, count in zip(sizes, counts, strict=True):
                for r in range(args.repeat):
                    for kind in ("copy", "export"):
                        result = run_child(kind, count, f"{size:g}-{r}", env)
                        rows.append((size, count, kind, result))
                        console.print(f"  {size:g} GB {kind:<6} {result['in'] / MB / result['seconds']:7.1f} MB/s "
                                      f"CPU {result['cpu']:5.1f} s  peak RSS {result['peak_rss'] / MB:6.1f} MB")
        finally:
            if stack:
                stack.stop()

    table = Table(title=f"export vs copy ({args.object_mb:g} MiB objects, incompressible, S3 "
                        f"{'external' if args.external else 'SeaweedFS'})")
    for column in ("size", "objects", "path", "seconds", "MB/s", "x copy", "CPU s/GB", "peak RSS MB"):
        table.add_column(column, justify="right")
    best_copy: dict[float, float] = {}
    for size, _count, kind, result in rows:
        if kind == "copy":
            best_copy[size] = max(best_copy.get(size, 0.0), result["in"] / result["seconds"])
    for size, count, kind, result in rows:
        rate = result["in"] / result["seconds"]
        table.add_row(f"{size:g} GB", str(count), "S3 -> ZIP -> S3" if kind == "export" else "S3 copy (stream)",
                      f"{result['seconds']:.1f}", f"{rate / MB:.1f}", f"{rate / best_copy[size]:.2f}",
                      f"{result['cpu'] / (result['in'] / 1e9):.1f}", f"{result['peak_rss'] / MB:.0f}")
    console.print(table)
    for size in sizes:
        best = {kind: max(r["in"] / r["seconds"] for s_, _c, k, r in rows if s_ == size and k == kind)
                for kind in ("copy", "export")}
        rss = max(r["peak_rss"] for s_, _c, k, r in rows if s_ == size and k == "export")
        console.print(f"{size:g} GB: best export {best['export'] / MB:.1f} MB/s = {best['export'] / best['copy']:.2f}x "
                      f"the best copy ({best['copy'] / MB:.1f} MB/s); export peak RSS {rss / MB:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.5,2", help="export sizes in GB, comma separated (default %(default)s)")
    parser.add_argument("--object-mb", type=float, default=16.0, help="size of each source object in MiB")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (copy, export) pair per size")
    parser.add_argument("--bucket", default="jetmedia-bench")
    parser.add_argument("--external", action="store_true", help="use JETMEDIA_* endpoints instead of embedded ones")
    parser.add_argument("--child", choices=("export", "copy"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
