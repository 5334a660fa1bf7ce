"""Export throughput and memory: S3 -> ZIP -> S3 through the real pipeline vs a plain aioboto3
multipart copy of the same bytes, side by side in one run, on two data sets.

Data sets (both uploaded with a CRC-32, as the upload path does):

- `files`: many ordinary files, ~2.8 MiB each (2.5-3.2 MiB), five in six incompressible (stored
  with S3's CRC-32), one in six JSON (deflated): 180 objects (~509 MiB) per 0.5 GB;
- `large`: incompressible 16 MiB objects (photos/videos): 30 per 0.5 GB.

Paths, each in its own child process (so "peak RSS" is that run's high-water mark, VmHWM):

- export: the upload, chunk and finalize stages; publishes one `ExportRequested` for the sources
  and waits for `ready` (HEADs, the streamed ZIP into a multipart upload, the presigned URL:
  everything a user waits for, publish -> ready);
- copy: plain aioboto3, no jetmedia code on the data path: GET each object in turn, cut the bytes
  into 8 MiB parts and upload them with up to 4 parts in flight (lib-storage's default queue),
  complete. What any client-side S3 -> S3 pass of those bytes costs on this endpoint;
- archive (in-process): the finalize stage's `write_archive` called directly on the same sources
  (their HEADs made first, not timed): the ZIP into a multipart upload without the bus, the job
  steps before it (chunk records, KV) or the presigned URL. Export minus archive is what the
  pipeline around the archive costs.

Copy and export alternate, each export with a copy measured right beside it, copy first in even
pairs and export first in odd ones (copy, export, export, copy...: the S3 server's CPU per GB
drifts from run to run, see `pair_order`); "x copy" is that pair's ratio, which is what to read
on a loaded machine. The archive run (`--paths` lists it by default) goes on the copy's far side
of the export (copy, export, archive, archive, export, copy, ...).

Besides the path's own CPU (all threads of its process), each row shows what the embedded servers
spent meanwhile (`weed`, nats-server: /proc/<pid>/stat before and after the child) and the path's
minor page faults per GB: on 2 cores with SeaweedFS taking most of one, client CPU per GB is
throughput, and a buffer mapped afresh costs a page fault per 4 KiB.

    .venv/bin/python bench/export.py [--size 0.5|2] [--datasets files,large] [--repeat 2]
                                     [--paths copy,export,archive]

0.5 GB takes ~2 minutes against the embedded S3 (SeaweedFS), 2 GB ~8. Any other S3 + NATS: set
JETMEDIA_NATS_URL / JETMEDIA_S3_* and pass --external (the sources are deleted afterwards unless
--keep). The embedded stack lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MB = 1_000_000
MIB = 1024 * 1024
PREFIX = "bench-export/"
COPY_PART = 8 * MIB
COPY_QUEUE = 4
PATHS = ("copy", "export", "archive")  # a pair's runs, in the order of its even pairs


def source_keys(dataset: str, size_gb: float) -> list[str]:
    """The keys of a data set at a size; a smaller size is a prefix of a bigger one."""
    if dataset == "files":
        count = round(180 * size_gb / 0.5)
        return [f"{PREFIX}files/{i:05d}.{'json' if i % 6 == 5 else 'bin'}" for i in range(count)]
    count = max(1, round(size_gb * 1000 * MB / (16 * MIB)))
    return [f"{PREFIX}large/{i:05d}.bin" for i in range(count)]


def source_bytes(key: str) -> bytes:
    """Deterministic size per key; random bytes, or JSON that deflates like real JSON (~4-6x)."""
    i = int(key.rsplit("/", 1)[1].split(".")[0])
    if "/large/" in key:
        return os.urandom(16 * MIB)
    rng = random.Random(i)
    size = rng.randint(int(2.5 * MIB), int(3.16 * MIB))
    if not key.endswith(".json"):
        return os.urandom(size)
    words = ["alpha", "beta", "gamma", "delta", "photo", "video", "album", "shared", "draft", "final"]
    records, total = [], 0
    while total < size:
        record = json.dumps({"id": rng.randrange(10**9), "name": f"{rng.choice(words)}-{rng.randrange(10**5)}",
                             "tags": rng.sample(words, 3), "score": round(rng.random() * 100, 3),
                             "created": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:00Z",
                             "owner": {"id": rng.randrange(10**6), "team": rng.choice(words)}})
        records.append(record)
        total += len(record) + 2
    return ("[\n" + ",\n".join(records) + "\n]\n").encode()[:size]


def cpu_seconds() -> float:
    """CPU time of this process, all threads: what a run costs, whatever else the machine does."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def minor_faults() -> int:
    """Minor page faults of this process so far: each is a fresh page touched (a new mmap'd
    buffer is faulted in and zeroed page by page), which is CPU a copy of the data costs."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def server_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) of a server process we started, from
    /proc/<pid>/stat: the S3 server and nats-server share the 2 cores with the paths measured."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- the two children ---------------------------------------------------------------


async def child_export(keys: list[str], run: str) -> dict[str, float]:
    from services import stages
    from shared import bus
    from shared import messages as m
    from shared.config import Settings
    from shared.jobs import decode_job
    from shared.runtime import Services, run_stages

    settings = Settings.from_env()
    async with Services.open(settings, name="bench-export") as services:
        stopping = asyncio.Event()
        workers = asyncio.create_task(run_stages(services, [stages.load(n) for n in ("upload", "chunk", "finalize")],
                                                 stopping))
        job_id = f"bench-{run}"
        # the job's record is watched (pushed on each write), not polled: polling it every 20 ms
        # cost this process and nats-server ~1,000 reads per 20 s that the copy does not make
        watcher = await services.jobs.kv.watch(job_id)
        started, cpu, faults, loop = time.perf_counter(), cpu_seconds(), minor_faults(), time.thread_time()
        event = m.ExportRequested(id=job_id, source="bench", time=m.now(), data=m.ExportRequestedData(
            keys=keys, name="bench"))
        await bus.publish(services.js, m.UPLOAD_EXPORT, event)
        seen: dict[str, float] = {}  # when the job record first showed each stage
        while True:
            entry = await watcher.updates(timeout=3600)
            if entry is None or not entry.value:  # the end of the (empty) initial values
                continue
            job = decode_job(entry.value)
            seen.setdefault(job.stage, time.perf_counter() - started)
            if job.final:
                break
        elapsed, cpu, faults = time.perf_counter() - started, cpu_seconds() - cpu, minor_faults() - faults
        await watcher.stop()
        loop = time.thread_time() - loop  # the event loop's thread: the rest is the ZIP writer and pools
        stopping.set()
        await workers
        if job.status != "ready":
            raise SystemExit(f"export ended {job.status}: {job.errors}")
        for part in job.exports:
            await services.storage.delete(part.key)
        return {"seconds": elapsed, "cpu": cpu, "loop": loop, "faults": faults, "in": job.bytes,
                **{f"{stage}_from": at for stage, at in seen.items()}, "ready_at": elapsed,
                "out": sum(p.bytes for p in job.exports)}


async def child_archive(keys: list[str], run: str) -> dict[str, float]:
    """The finalize stage's archive writer alone, in this process: no bus, no stages."""
    from services.finalize.export import Progress, write_archive
    from shared.config import Settings
    from shared.exportplan import SourceInfo
    from shared.jobs import new_job
    from shared.runtime import Context, Services

    settings = Settings.from_env()
    async with Services.open(settings, name="bench-archive") as services:
        heads = await asyncio.gather(*(services.storage.head(key) for key in keys))  # the chunk stage's part
        sources = [SourceInfo(key=key, name=key.rsplit("/", 1)[1], size=info.size, crc32=info.crc32, etag=info.etag)
                   for key, info in zip(keys, heads, strict=True) if info is not None]
        job, _created = await services.jobs.create(new_job(f"bench-archive-{run}", "export", status="running"))
        ctx = Context(services, "finalize", job.id, 1)
        started, cpu, faults, loop = time.perf_counter(), cpu_seconds(), minor_faults(), time.thread_time()
        written = await write_archive(ctx, job, key=f"{PREFIX}archive-{run}.zip", name="bench.zip",
                                      bucket=settings.bucket, sources=sources, missing=[], part=1, parts=1,
                                      progress=Progress())
        elapsed, cpu, faults = time.perf_counter() - started, cpu_seconds() - cpu, minor_faults() - faults
        loop = time.thread_time() - loop
        await services.storage.delete(written.key)
    return {"seconds": elapsed, "cpu": cpu, "loop": loop, "faults": faults,
            "in": sum(source.size for source in sources), "out": written.bytes}


async def child_copy(keys: list[str], run: str) -> dict[str, float]:
    """Plain aioboto3: sequential GETs, 8 MiB parts, up to 4 part uploads in flight."""
    import aioboto3
    from botocore.config import Config

    env = os.environ
    bucket, key = env["JETMEDIA_BUCKET"], f"{PREFIX}copy-{run}.bin"
    config = Config(max_pool_connections=16, s3={"addressing_style": "path"}, signature_version="s3v4",
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=env["JETMEDIA_S3_ENDPOINT"], region_name=env.get(
            "JETMEDIA_S3_REGION", "us-east-1"), aws_access_key_id=env["JETMEDIA_S3_ACCESS_KEY"],
            aws_secret_access_key=env["JETMEDIA_S3_SECRET_KEY"], config=config) as s3:
        started, cpu, faults = time.perf_counter(), cpu_seconds(), minor_faults()
        upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        parts: list[dict[str, Any]] = []
        slots = asyncio.Semaphore(COPY_QUEUE)
        tasks: list[asyncio.Task[None]] = []

        async def send(number: int, body: bytes) -> None:
            try:
                resp = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            finally:
                slots.release()

        async def part(body: bytes) -> None:
            await slots.acquire()
            tasks.append(asyncio.create_task(send(len(tasks) + 1, body)))

        size, buffer = 0, bytearray()
        try:
            for source in keys:
                resp = await s3.get_object(Bucket=bucket, Key=source)
                async with resp["Body"] as body:
                    data = await body.read()
                size += len(data)
                buffer += data
                while len(buffer) >= COPY_PART:
                    await part(bytes(buffer[:COPY_PART]))
                    del buffer[:COPY_PART]
            if buffer:
                await part(bytes(buffer))
            await asyncio.gather(*tasks)
            parts.sort(key=lambda p: p["PartNumber"])
            await s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                               MultipartUpload={"Parts": parts})
        except BaseException:
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        elapsed, cpu, faults = time.perf_counter() - started, cpu_seconds() - cpu, minor_faults() - faults
        await s3.delete_object(Bucket=bucket, Key=key)
    return {"seconds": elapsed, "cpu": cpu, "loop": cpu, "faults": faults, "in": size, "out": size}


def child_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    keys = source_keys(args.dataset, args.size)
    run = {"export": child_export, "archive": child_archive, "copy": child_copy}[args.child]
    result = asyncio.run(run(keys, args.run))
    result["peak_rss"] = peak_rss()
    print(json.dumps(result), flush=True)


# --- the parent ---------------------------------------------------------------------------


async def upload_sources(settings: Any, keys: list[str]) -> None:
    from shared.runtime import Services

    async with Services.open(settings, name="bench-setup", layout=False) as services:
        await services.storage.ensure_bucket()
        existing = set(await services.storage.list_keys(PREFIX))
        todo = [k for k in keys if k not in existing]
        for start in range(0, len(todo), 4):
            batch = todo[start:start + 4]
            datas = [source_bytes(k) for k in batch]
            await asyncio.gather(*(services.storage.put_bytes(k, d) for k, d in zip(batch, datas, strict=True)))


async def delete_sources(settings: Any) -> None:
    from shared.runtime import Services

    async with Services.open(settings, name="bench-cleanup", layout=False) as services:
        keys = await services.storage.list_keys(PREFIX)
        for start in range(0, len(keys), 1000):
            await services.storage.client.delete_objects(Bucket=services.storage.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})


def run_child(kind: str, dataset: str, size: float, run: str, env: dict[str, str],
              servers: dict[str, int | None]) -> dict[str, float]:
    """One path in a fresh child; the servers' CPU is read before and after it (the child's
    start-up and teardown included: a few tenths of a second of nats-server, next to nothing of S3).

    The page cache is written back first (`sync`, not timed): a run writes 0.5-2 GB into the S3
    server's volume files, and the kernel flushed it during whichever run came next (2 GB pairs
    went 0.86x with the export second, 1.38x with the copy second, weed 14-20 s/GB)."""
    os.sync()
    before = {name: server_cpu(pid) for name, pid in servers.items()}
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--dataset", dataset, "--size", str(size),
                           "--run", run], env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, pid in servers.items():
        result[name] = server_cpu(pid) - before[name]
    return result


def pair_order(r: int, paths: tuple[str, ...] = PATHS) -> tuple[str, ...]:
    """Copy first in even pairs, export first in odd ones (copy, export, export, copy, ...): the
    S3 server's CPU per GB drifts up from run to run as its volumes fill (the vacuum is off, the
    outputs are deleted: 27.4, 29.6, 29.7, 31.9 weed CPU s in four 2 GB runs in a row), so a fixed
    order charged that drift to whichever path ran second, every time. The in-process archive,
    when measured, goes on the export's other side."""
    order = tuple(path for path in PATHS if path in paths)
    return order if r % 2 == 0 else order[::-1]


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def parent_main(args: argparse.Namespace) -> None:
    from shared.config import Settings
    from shared.devstack import EmbeddedStack

    sizes = [float(s) for s in args.size.split(",")]
    datasets = args.datasets.split(",")
    paths = tuple(args.paths.split(","))
    if "copy" not in paths or not set(paths) <= set(PATHS):
        raise SystemExit(f"--paths: copy and any of export, archive (not {args.paths!r})")
    console = Console(width=160)
    rows: list[tuple[str, float, int, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="jetmedia-bench-") as tmp:
        # no background vacuum: it compacted the volumes earlier runs' deleted outputs left, in the
        # middle of a random later run (weed CPU 15-22 s/GB for the same work), on either side
        stack = None if args.external else EmbeddedStack(Path(tmp), s3_vacuum_interval=24 * 3600).start()
        try:
            settings = Settings.from_env() if stack is None else Settings.from_env(
                {}, **{k.removeprefix("JETMEDIA_").lower(): v for k, v in stack.env().items()})
            settings = settings.replace(bucket=args.bucket, log_level="WARNING")
            env = {**os.environ, **(stack.env() if stack else {}), "JETMEDIA_BUCKET": args.bucket,
                   "JETMEDIA_LOG_LEVEL": "WARNING", "JETMEDIA_METRICS_PORT": "0",
                   "JETMEDIA_S3_REGION": settings.s3_region}
            servers = {"weed": stack.s3.proc.pid if stack and stack.s3 and stack.s3.proc else None,
                       "nats": stack.nats.proc.pid if stack and stack.nats and stack.nats.proc else None}
            try:
                for dataset in datasets:
                    keys = source_keys(dataset, max(sizes))
                    console.print(f"uploading {len(keys)} {dataset} sources ...")
                    asyncio.run(upload_sources(settings, keys))
                for size in sizes:
                    for r in range(args.repeat):
                        for dataset in datasets:
                            for kind in pair_order(r, paths):
                                result = run_child(kind, dataset, size, f"{dataset}-{size:g}-{r}", env, servers)
                                result["pair"] = r
                                rows.append((dataset, size, len(source_keys(dataset, size)), kind, result))
                                console.print(
                                    f"  {dataset:<5} {size:g} GB {kind:<6} {result['in'] / MB / result['seconds']:7.1f}"
                                    f" MB/s  CPU {result['cpu']:5.1f} s (loop {result['loop']:4.1f})"
                                    f"  weed {result['weed']:5.1f} s"
                                    f"  peak RSS {result['peak_rss'] / MB:6.1f} MB  (load {load_average()})"
                                    + (f"  finalize from {result['finalize_from']:.2f} s" if "finalize_from" in result
                                       else ""))
            finally:
                if stack is None and not args.keep:
                    asyncio.run(delete_sources(settings))
        finally:
            if stack:
                stack.stop()
    report(console, rows, args.external)


LABELS = {"copy": "plain copy", "export": "S3 -> ZIP -> S3", "archive": "archive in-process"}


def report(console: Console, rows: list[tuple[str, float, int, str, dict[str, float]]], external: bool) -> None:
    table = Table(title=f"export vs plain copy (S3 {'external' if external else 'SeaweedFS'})")
    for column in ("data set", "size", "objects", "path", "seconds", "MB/s", "x copy", "CPU s/GB", "weed s/GB",
                   "nats s/GB", "faults k/GB", "peak RSS MB"):
        table.add_column(column, justify="right")
    ratios: dict[tuple[str, float, str], list[float]] = {}
    copies = {(d, s, r["pair"]): r for d, s, _c, k, r in rows if k == "copy"}
    for dataset, size, count, kind, result in rows:
        rate = result["in"] / result["seconds"]
        if kind != "copy":  # its pair's copy ran right beside it (pair_order)
            pair = copies[dataset, size, result["pair"]]
            copy_rate = pair["in"] / pair["seconds"]
            ratios.setdefault((dataset, size, kind), []).append(rate / copy_rate)
        table.add_row(dataset, f"{size:g} GB", str(count), LABELS[kind],
                      f"{result['seconds']:.1f}", f"{rate / MB:.1f}",
                      "" if kind == "copy" else f"{rate / copy_rate:.2f}",
                      *(f"{result[k] / (result['in'] / 1e9):.1f}" for k in ("cpu", "weed", "nats")),
                      f"{result['faults'] / 1000 / (result['in'] / 1e9):.0f}", f"{result['peak_rss'] / MB:.0f}")
    console.print(table)
    for (dataset, size, kind), values in ratios.items():
        rss = max(r["peak_rss"] for d, s, _c, k, r in rows if (d, s, k) == (dataset, size, kind))
        console.print(f"{dataset} {size:g} GB: {kind} / copy (pairs) {', '.join(f'{v:.2f}' for v in values)}; "
                      f"median {statistics.median(values):.2f}; {kind} peak RSS {rss / MB:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="0.5", help="export size in GB: 0.5, 2 or 0.5,2 (default %(default)s)")
    parser.add_argument("--datasets", default="files,large", help="files, large or both (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path per data set and size")
    parser.add_argument("--bucket", default="jetmedia-bench")
    parser.add_argument("--external", action="store_true", help="use JETMEDIA_* endpoints instead of embedded ones")
    parser.add_argument("--keep", action="store_true", help="with --external: keep the sources for the next run")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="what runs in each pair: copy and any of export (the pipeline), archive (in-process)"
                             " (default %(default)s)")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--run", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.size = float(args.size)
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
