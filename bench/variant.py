"""Variant bench: N real-sized photos (24 MP JPEG) → thumb 400 + display 1600 WebP, side by side:

  pipeline the real stack in one process: upload → variant → finalize stages, embedded nats-server +
           SeaweedFS; clock from the first AssetUploaded published to the last asset.ready (S3
           download, decode, encode, colours, ThumbHash, S3 uploads, job records, events)
  sharp    Node sharp (bench/sharp/variants.js) on local files at its defaults (q80, effort 4), one
           photo per core at a time: the tool the replaced services used. `npm ci` into
           bench/sharp/node_modules on first use (or `make bench-deps`); skipped when Node is absent
  vips     `services.variant.images.render` on local files in a thread pool (one image per core):
           the stage's image work alone, no S3, no bus
  --all adds: bare pyvips + S3 (a plain script with the stage's S3 traffic), the WebP effort sweep,
           libvips' default threading, a Pillow process pool, and the resize-kernel table

Every contender runs in a fresh subprocess, after an `os.sync()` (the pipeline syncs again after
putting the photos into S3): data other runs or programs left dirty is written back before the
clock starts, not by the kernel inside a timed batch. Rounds interleave (order reversed every
other round). For
each: images/s over the whole batch (best round kept; the pipeline/sharp ratio is also given as
the median of each round's own ratio), p95 time per image, CPU per image, peak RSS, mean bytes per
variant, and PSNR of the 1600 px WebP against the contender's own unencoded resize and against one
shared reference: a full-size decode resized with lanczos3 (mean over all 24 photos: QUALITY_SAMPLES).
Each pipeline round also prints where its two cores went: when each CPU thread's first render
started and its last one ended (the batch's start and tail), the share of the time the CPU
threads were rendering, the process's CPU per image by thread kind (event loop, the CPU threads'
own share, libvips' threads) and how many cores the whole machine kept busy (stolen time apart):
a slow round shows whether it started late, ended ragged, or had a slower machine.

    make bench-deps                                        # once: sharp into bench/sharp (npm ci)
    .venv/bin/python bench/variant.py                      # 24 photos of 6000×4000, 3 rounds, ~3 min
    .venv/bin/python bench/variant.py --count 8 --rounds 1 --all
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import importlib
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

NO_VACUUM = 24 * 3600  # s: the S3 server compacts nothing mid-run (see bench/export.py)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUALITY = 80
THUMB, DISPLAY = 400, 1600
QUALITY_SAMPLES = 24  # photos whose display WebP is scored (references cached beside the photos)


# --- inputs ------------------------------------------------------------------------------------


def make_photos(count: int, width: int, height: int, cache: Path) -> list[Path]:
    """Photo-like JPEGs from services/samples.py, made once and cached (making them takes longer
    than the bench itself)."""
    from services import samples

    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / f"photo-{width}x{height}-{seed}.jpg" for seed in range(1, count + 1)]
    todo = [p for p in paths if not p.exists()]

    def make(path: Path) -> None:
        seed = int(path.stem.rsplit("-", 1)[1])
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(samples.photo(width, height, seed=seed))
        tmp.rename(path)

    if todo:
        print(f"making {len(todo)} photos of {width}×{height} in {cache} ...", flush=True)
        with cf.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            list(pool.map(make, todo))
    return paths


# --- shared measuring --------------------------------------------------------------------------


def psnr(reference: Any, encoded: bytes) -> float:
    import pyvips

    decoded = pyvips.Image.new_from_buffer(encoded, "")
    diff = (reference.cast("float") - decoded.cast("float")) ** 2
    mse = diff.avg()
    return float("inf") if mse == 0 else 10 * math.log10(255 * 255 / mse)


class PeakRss:
    """Peak resident memory of this process (and, for a process pool, its children), sampled every
    20 ms. getrusage's ru_maxrss would do for one process, but Linux carries it across exec from
    the parent, so a fresh subprocess would report the bench driver's peak."""

    def __init__(self, children: bool = False) -> None:
        self.children = children
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = [os.getpid()]
            if self.children:
                for task in Path("/proc/self/task").iterdir():
                    with contextlib.suppress(OSError):
                        pids += [int(p) for p in (task / "children").read_text().split()]
            self.peak = max(self.peak, sum(_rss_kib(pid) for pid in pids))
            self._stop.wait(0.02)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reference(path: Path) -> Any:
    """The common yardstick: a full-size decode resized to 1600 px with lanczos3, unencoded. Made
    once per photo and cached beside it as raw pixels (loads in milliseconds; making it ~0.4 s)."""
    import pyvips

    for cached in path.parent.glob(f"{path.stem}.lanczos3-{DISPLAY}-*.raw"):
        width, height, bands = (int(n) for n in cached.stem.rsplit("-", 1)[1].split("x"))
        return pyvips.Image.new_from_memory(cached.read_bytes(), width, height, bands, "uchar")
    full = pyvips.Image.jpegload_buffer(path.read_bytes())
    image = full.resize(DISPLAY / max(full.width, full.height), kernel="lanczos3").cast("uchar").copy_memory()
    cached = path.with_name(f"{path.stem}.lanczos3-{DISPLAY}-{image.width}x{image.height}x{image.bands}.raw")
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(image.write_to_memory())
    tmp.rename(cached)
    return image


def result(name: str, settings: str, wall: float, per_image: list[float], sizes: dict[str, list[int]],
           quality: list[tuple[float, float]], rss: float) -> dict[str, Any]:
    """`quality`: (PSNR vs the contender's own unencoded resize, PSNR vs `reference`) per sample."""
    per_image = sorted(per_image)
    return {
        "name": name, "settings": settings, "images": len(per_image), "per_s": len(per_image) / wall,
        "p95_ms": 1000 * per_image[max(0, math.ceil(0.95 * len(per_image)) - 1)],
        "rss_mb": rss, "thumb_bytes": statistics.mean(sizes["thumb"]),
        "display_bytes": statistics.mean(sizes["display"]),
        "psnr": statistics.mean(q[0] for q in quality), "psnr_ref": statistics.mean(q[1] for q in quality),
    }


# --- bare pyvips -------------------------------------------------------------------------------


def vips_resize(path_or_bytes: Path | bytes, kernel: str = "") -> Any:
    """What the stage does, bare: JPEG shrink-on-load by the largest power of two that keeps ≥ 1600 px,
    one resize, in memory."""
    import pyvips

    from services.variant.images import KERNEL

    kernel = kernel or KERNEL
    source = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    header = pyvips.Image.new_from_buffer(source, "")
    long_edge = max(header.width, header.height)
    shrink = next(s for s in (8, 4, 2, 1) if s == 1 or long_edge / s >= DISPLAY)
    image = pyvips.Image.jpegload_buffer(source, shrink=shrink, access="sequential")
    return image.resize(DISPLAY / max(image.width, image.height), kernel=kernel).copy_memory()


def vips_work(source: bytes, effort: int, quality: int = QUALITY) -> tuple[bytes, bytes]:
    """The stage's image work, bare: `services.variant.images.render` itself (decode, both variants,
    palette and ThumbHash), so this row follows every change to the stage's image code."""
    from services.variant.images import render

    rendered = render(source, bench_presets(effort, quality))
    by_name = {v.preset.name: v.data for v in rendered.variants}
    return by_name["display"], by_name["thumb"]


@functools.cache
def bench_presets(effort: int, quality: int = QUALITY) -> tuple[Any, ...]:
    from services.variant.presets import parse, select

    return select(parse(preset_spec(effort, quality)), None)


BUILTIN = -1  # effort and quality: the stage's built-in presets as they are


def preset_spec(effort: int, quality: int) -> str:
    """JETMEDIA_VARIANT_PRESETS for the bench: both sizes at one effort and quality, or "" (the
    built-in presets)."""
    if effort == BUILTIN:
        return ""
    return f"thumb:webp:{THUMB}:q{quality}:e{effort},display:webp:{DISPLAY}:q{quality}:e{effort}"


def preset_label(effort: int, quality: int) -> str:
    if effort != BUILTIN:
        return f"q{quality} effort {effort}"
    from services.variant.presets import BUILTIN as BUILT_IN
    from services.variant.presets import select

    return "built-in: " + ", ".join(f"{p.name} q{p.q} e{p.e}" for p in select(BUILT_IN, None))


def vips_one(path: Path, effort: int, quality: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    display_webp, thumb_webp = vips_work(path.read_bytes(), effort, quality)
    return time.perf_counter() - started, len(display_webp), len(thumb_webp)


def run_vips(paths: list[Path], effort: int, quality: int, threads: int, with_s3: bool = False) -> dict[str, Any]:
    """One image per core in a thread pool. `with_s3`: the whole job a script would do, with the
    stage's S3 traffic: GET the source from the same local S3 endpoint, PUT both variants (boto3,
    CRC-32 like the stage), but no bus, no job record, no runtime: the ceiling for the stage."""
    import pyvips

    if threads:
        pyvips.concurrency_set(threads)
    pyvips.cache_set_max(0)
    workers = os.cpu_count() or 2
    with contextlib.ExitStack() as stack:
        one = functools.partial(vips_one, effort=effort, quality=quality)
        pids = {"process": os.getpid()}
        if with_s3:
            one, pid = stack.enter_context(bare_s3(paths, effort, quality, workers))
            pids["s3"] = pid
        rss = stack.enter_context(PeakRss())
        pool = stack.enter_context(cf.ThreadPoolExecutor(workers))
        list(pool.map(one, paths[:workers]))  # warm up: load codecs, fill pools
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        done = list(pool.map(one, paths))
        wall = time.perf_counter() - started
        cpu = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
    scores = []
    for path in paths[:QUALITY_SAMPLES]:
        webp = vips_work(path.read_bytes(), effort, quality)[0]
        scores.append((psnr(vips_resize(path), webp), psnr(reference(path), webp)))
    label = preset_label(effort, quality) + ", "
    label += f"{threads} libvips thread/image" if threads else "libvips threads default"
    name = "bare pyvips + S3 (boto3)" if with_s3 else "bare pyvips, local files"
    out = result(name, label, wall, [d[0] for d in done],
                 {"display": [d[1] for d in done], "thumb": [d[2] for d in done]}, scores, rss.mb)
    out["cpu_ms_per_image"] = {name: 1000 * seconds / len(paths) for name, seconds in cpu.items()}
    return out


@contextlib.contextmanager
def bare_s3(paths: list[Path], effort: int, quality: int,
            workers: int) -> Iterator[tuple[Callable[[Path], Any], int]]:
    """The local S3 endpoint the stage uses, the photos in it, and a per-image function that
    does what a plain script would: GET, render, PUT, PUT."""
    import boto3
    from botocore.config import Config

    from shared.seaweed import SeaweedS3

    with tempfile.TemporaryDirectory(prefix="jm-bench-") as tmp:
        s3 = SeaweedS3(Path(tmp)).start()
        try:
            client = boto3.client(
                "s3", endpoint_url=s3.url, region_name="us-east-1",
                aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
                config=Config(max_pool_connections=workers * 2, s3={"addressing_style": "path"},
                              request_checksum_calculation="when_required",
                              response_checksum_validation="when_required"),
            )
            client.create_bucket(Bucket="bench")
            for path in paths:
                client.put_object(Bucket="bench", Key=f"photos/{path.name}", Body=path.read_bytes())

            def one(path: Path) -> tuple[float, int, int]:
                started = time.perf_counter()
                source = client.get_object(Bucket="bench", Key=f"photos/{path.name}")["Body"].read()
                display_webp, thumb_webp = vips_work(source, effort, quality)
                for name, data in (("display", display_webp), ("thumb", thumb_webp)):
                    client.put_object(Bucket="bench", Key=f"variants/{path.stem}/{name}.webp", Body=data,
                                      ContentType="image/webp", ChecksumAlgorithm="CRC32")
                return time.perf_counter() - started, len(display_webp), len(thumb_webp)

            assert s3.proc is not None
            yield one, s3.proc.pid
        finally:
            s3.stop()


# --- Pillow process pool -----------------------------------------------------------------------


def pillow_resize(source: bytes) -> tuple[Any, Any]:
    from PIL import Image, ImageOps

    image = Image.open(io.BytesIO(source))
    image.draft("RGB", (DISPLAY, DISPLAY))  # JPEG DCT scaling: Pillow's shrink-on-load
    image = ImageOps.exif_transpose(image)
    image.thumbnail((DISPLAY, DISPLAY))
    thumb = image.copy()
    thumb.thumbnail((THUMB, THUMB))
    return image, thumb


def pillow_one(path: str, method: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    display, thumb = pillow_resize(Path(path).read_bytes())
    sizes = []
    for image in (display, thumb):
        out = io.BytesIO()
        image.save(out, "WEBP", quality=QUALITY, method=method)
        sizes.append(out.tell())
    return time.perf_counter() - started, sizes[0], sizes[1]


def run_pillow(paths: list[Path], method: int) -> dict[str, Any]:
    import pyvips

    workers = os.cpu_count() or 2
    with PeakRss(children=True) as rss, cf.ProcessPoolExecutor(workers) as pool:
        list(pool.map(pillow_one, [str(paths[0])] * workers, [method] * workers))  # warm the processes
        pids = [os.getpid(), *(p.pid for p in pool._processes.values())]
        cpu = sum(cpu_seconds(pid) for pid in pids)
        started = time.perf_counter()
        done = list(pool.map(pillow_one, [str(p) for p in paths], [method] * len(paths)))
        wall = time.perf_counter() - started
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
    quality = []
    for path in paths[:QUALITY_SAMPLES]:
        display, _ = pillow_resize(path.read_bytes())
        out = io.BytesIO()
        display.save(out, "WEBP", quality=QUALITY, method=method)
        own = pyvips.Image.new_from_memory(display.tobytes(), display.width, display.height, 3, "uchar")
        quality.append((psnr(own, out.getvalue()), psnr(reference(path), out.getvalue())))
    out = result("Pillow process pool", f"q{QUALITY} method {method} (Pillow default)", wall, [d[0] for d in done],
                 {"display": [d[1] for d in done], "thumb": [d[2] for d in done]}, quality, rss.mb)
    out["cpu_ms_per_image"] = {"processes": 1000 * cpu / len(paths)}
    return out


# --- Node sharp --------------------------------------------------------------------------------

SHARP = ROOT / "bench" / "sharp"


def sharp_ready() -> str | None:
    """None when bench/sharp can run, else why not. Installs sharp there with `npm ci` (what
    `make bench-deps` runs) the first time; never part of `make test`."""
    import shutil

    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found (make node installs them): sharp skipped"
    if not (SHARP / "node_modules" / "sharp").is_dir():
        print("installing sharp into bench/sharp/node_modules (npm ci) ...", flush=True)
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=SHARP,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"npm ci in bench/sharp failed, sharp skipped:\n{done.stderr[-2000:]}"
    return None


def run_sharp(paths: list[Path], effort: int) -> dict[str, Any]:
    """bench/sharp/variants.js: sharp's own pipeline per variant (shrink-on-load, lanczos3, autorotate,
    metadata stripped), WebP at `effort` and q80, one photo per core at a time."""
    workers = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="jm-bench-sharp-") as keep:
        options = {"paths": [str(p) for p in paths], "quality": QUALITY, "effort": effort, "pool": workers,
                   "keep": keep, "samples": QUALITY_SAMPLES}
        done = subprocess.run(["node", str(SHARP / "variants.js"), json.dumps(options)], capture_output=True,
                              text=True, check=False)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"sharp failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        raw = json.loads(line.removeprefix("RESULT "))
        quality = []
        for i, path in enumerate(paths[:QUALITY_SAMPLES]):
            webp = (Path(keep) / f"{i}.webp").read_bytes()
            quality.append((psnr(vips_resize(path, "lanczos3"), webp), psnr(reference(path), webp)))
    out = result(f"Node sharp {raw['sharp']} (libvips {raw['vips']})",
                 f"q{QUALITY} effort {effort}, {workers} photos at a time", raw["wall"], raw["per_image"],
                 {"display": raw["display"], "thumb": raw["thumb"]}, quality, raw["rss_mb"])
    out["cpu_ms_per_image"] = {"node": 1000 * raw["cpu_s"] / len(paths)}
    return out


# --- the running stage -------------------------------------------------------------------------


async def run_stage_async(paths: list[Path], effort: int, quality: int, concurrency: int) -> dict[str, Any]:
    """The real pipeline in this process: upload → variant → finalize on an embedded nats-server and
    SeaweedFS. Clock: first AssetUploaded published → last asset.ready seen."""
    from nats.aio.msg import Msg

    from services import stages
    from shared import bus
    from shared import messages as m
    from shared.config import Settings
    from shared.devstack import EmbeddedStack
    from shared.runtime import Services, run_stages

    presets = preset_spec(effort, quality)
    with (tempfile.TemporaryDirectory(prefix="jm-bench-") as tmp,
          EmbeddedStack(Path(tmp), s3_vacuum_interval=NO_VACUUM) as stack):
        env = {k.removeprefix("JETMEDIA_").lower(): v for k, v in stack.env().items()}
        settings = Settings.from_env({}, **env, bucket="bench", variant_presets=presets, metrics_port=0,
                                     data_dir=tmp)
        if concurrency:
            settings = settings.replace(stage_concurrency={"variant": concurrency})
        async with Services.open(settings, name="bench") as services:
            await services.storage.ensure_bucket()
            for i, path in enumerate(paths):
                await services.storage.put_bytes(f"photos/{i}.jpg", path.read_bytes(), content_type="image/jpeg")
            os.sync()  # the photos' 58 MB on disk now, not written back by the kernel inside the timed batch

            real = stages.load("variant")
            renders = RenderClock()  # when each render ran, on which thread (bench/variant.py only)
            variant_module = importlib.import_module(real.handle.__module__)
            setattr(variant_module, "render", renders.wrap(variant_module.render))  # noqa: B010
            per_image: list[float] = []
            parts: list[m.PartData] = []

            async def timed(event: m.VariantRequested, ctx: Any) -> Any:
                began = time.perf_counter()
                emits = await real.handle(event, ctx)
                per_image.append(time.perf_counter() - began)
                parts.append(emits[0].event.data)
                return emits

            async def publish(job: str, key: str) -> None:
                await bus.publish(services.js, m.UPLOAD_ASSET, m.AssetUploaded(
                    id=job, source="bench", time=m.now(), data=m.AssetUploadedData(key=key, bucket="bench"),
                ))

            # asset.ready is published to the events stream; a core subscription sees the same
            # publish, so the bench counts them without polling the server on the measured cores.
            arrived = 0
            counted = asyncio.Condition()

            async def on_ready(_msg: Msg) -> None:
                nonlocal arrived
                async with counted:
                    arrived += 1
                    counted.notify_all()

            subscription = await services.nc.subscribe(m.EVENTS_ASSET_READY, cb=on_ready)

            async def finished(n: int) -> None:
                async with counted:
                    await counted.wait_for(lambda: arrived >= n)

            in_flight = settings.stage_concurrency.get("variant") or real.concurrency or settings.concurrency
            rss = PeakRss().__enter__()  # this process only: nats-server and weed are children too
            stopping = asyncio.Event()
            pipeline = [stages.load("upload"), dataclasses.replace(real, handle=timed), stages.load("finalize")]
            workers = asyncio.create_task(run_stages(services, pipeline, stopping))
            warm = os.cpu_count() or 2
            for i in range(warm):  # warm up like the other contenders
                await publish(f"warm-{i}", f"photos/{i}.jpg")
            await finished(warm)
            per_image.clear()
            parts.clear()
            assert stack.s3 and stack.s3.proc and stack.nats and stack.nats.proc
            pids = {"pipeline": os.getpid(), "s3": stack.s3.proc.pid, "nats": stack.nats.proc.pid}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            botocore = count_botocore(services.storage.client)  # requests the fast S3 path handed back
            threads_before, machine_before = thread_cpu(), machine_cpu()
            renders.clear()
            print("timed batch begins", file=sys.stderr, flush=True)  # for a profiler to attach now
            started = time.perf_counter()
            for i in range(len(paths)):
                await publish(f"bench-{i}", f"photos/{i}.jpg")
            await finished(warm + len(paths))
            wall = time.perf_counter() - started
            threads_after, machine_after = thread_cpu(), machine_cpu()
            rss.__exit__()
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
            timeline = renders.summary(started, wall, threads_before, threads_after, len(paths))
            timeline["machine_busy"] = [(a - b) / wall for a, b in zip(machine_after, machine_before, strict=True)]
            timeline["botocore_requests"] = sum(botocore.values())
            await subscription.unsubscribe()
            stopping.set()
            await workers

            sizes: dict[str, list[int]] = {"thumb": [], "display": []}
            for part in parts:
                for out in part.outputs:
                    sizes[out.preset].append(out.bytes)
            scores = []
            for i, path in enumerate(paths[:QUALITY_SAMPLES]):
                stored = await services.storage.get_bytes(f"variants/bench-{i}/display.webp")
                scores.append((psnr(vips_resize(path), stored), psnr(reference(path), stored)))
    out = result("pipeline (upload→variant→finalize)", f"{preset_label(effort, quality)}, {in_flight} in flight", wall,
                 per_image, sizes, scores, rss.mb)
    out["cpu_ms_per_image"] = {name: 1000 * seconds / len(paths) for name, seconds in cpu.items()}
    out["timeline"] = timeline
    return out


class RenderClock:
    """Where the pipeline's two cores went in one batch: each render's start and end on its CPU
    thread, and every thread's CPU time. Tells a slow round's cause (a late first render, a long
    tail, the CPU threads waiting) from a slow machine."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, float, float]] = []  # (native thread id, start, end)

    def wrap(self, render: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return render(*args, **kwargs)
            finally:
                self.spans.append((threading.get_native_id(), began, time.perf_counter()))
        return timed

    def clear(self) -> None:
        self.spans.clear()

    def summary(self, started: float, wall: float, before: dict[int, tuple[str, float, float]],
                after: dict[int, tuple[str, float, float]], images: int) -> dict[str, Any]:
        """ms from the first publish: first render start, each CPU thread's last render end and
        busy time; CPU ms per image by thread kind (event loop, CPU threads' Python, libvips)."""
        by_thread: dict[int, list[tuple[float, float]]] = {}
        for tid, began, ended in self.spans:
            by_thread.setdefault(tid, []).append((began - started, ended - started))
        kinds: dict[str, float] = {}
        for tid, (comm, seconds, system) in after.items():
            kind = ("loop" if tid == os.getpid() else "cpu-threads" if tid in by_thread
                    else "libvips" if "vips" in comm or "worker" in comm else "other")
            kinds[kind] = kinds.get(kind, 0.0) + seconds - before.get(tid, (comm, 0.0, 0.0))[1]
            if kind == "loop":
                kinds["loop-sys"] = system - before.get(tid, (comm, 0.0, 0.0))[2]
        ends = sorted(max(e for _, e in spans) for spans in by_thread.values())
        busy = sum(e - b for spans in by_thread.values() for b, e in spans)
        return {
            "wall_ms": 1000 * wall,
            "first_render_ms": 1000 * min((b for spans in by_thread.values() for b, _ in spans), default=0.0),
            "first_starts_ms": sorted(1000 * min(b for b, _ in spans) for spans in by_thread.values()),
            "last_ends_ms": [1000 * e for e in ends],
            "renders_per_thread": sorted(len(spans) for spans in by_thread.values()),
            "render_busy": busy / (max(len(by_thread), 1) * wall),
            "cpu_ms_per_image": {k: 1000 * v / images for k, v in sorted(kinds.items())},
        }


def thread_cpu() -> dict[int, tuple[str, float, float]]:
    """This process's threads: native id -> (name, user + system CPU seconds, system seconds)."""
    out: dict[int, tuple[str, float, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = ((task / "comm").read_text().strip(), (int(fields[11]) + int(fields[12])) / tick,
                                   int(fields[12]) / tick)
    return out


def count_botocore(client: Any) -> dict[str, int]:
    """Count the GETs and PUTs botocore sends from now on (the hot path sends them on
    shared/fasts3.py; botocore only repeats what did not succeed there)."""
    counts = {"get_object": 0, "put_object": 0}
    for name in counts:
        method = getattr(client, name)

        async def counted(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            counts[_name] += 1
            return await _method(*args, **kwargs)

        setattr(client, name, counted)
    return counts


def machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy (all but idle and iowait), and of it stolen by
    the hypervisor, so far (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / tick, fields[7] / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- resize kernels (not timed) ----------------------------------------------------------------


def kernels(paths: list[Path], effort: int, quality: int) -> list[dict[str, Any]]:
    """Bytes and PSNR of the 1600 px WebP per resize kernel, after the same JPEG shrink-on-load."""
    rows = []
    samples = paths[:QUALITY_SAMPLES]
    refs = [reference(p) for p in samples]
    for kernel in ("lanczos3", "lanczos2", "cubic", "mks2021", "mitchell"):
        sizes, own, ref = [], [], []
        for path, yardstick in zip(samples, refs, strict=True):
            image = vips_resize(path, kernel)
            webp = image.webpsave_buffer(Q=quality, effort=effort, keep="none")
            sizes.append(len(webp))
            own.append(psnr(image, webp))
            ref.append(psnr(yardstick, webp))
        rows.append({"kernel": kernel, "bytes": statistics.mean(sizes), "psnr": statistics.mean(own),
                     "psnr_ref": statistics.mean(ref)})
    return rows


# --- driver ------------------------------------------------------------------------------------


def run_one(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the embedded stack stops by PID
    paths = [Path(p) for p in json.loads(args.paths)]
    if args.run in ("vips", "vips-s3"):
        out = run_vips(paths, args.effort, args.quality, args.threads, with_s3=args.run == "vips-s3")
    elif args.run == "pillow":
        out = run_pillow(paths, args.effort)
    elif args.run == "sharp":
        out = run_sharp(paths, args.effort)
    else:
        out = asyncio.run(run_stage_async(paths, args.effort, args.quality, args.concurrency))
    print("RESULT " + json.dumps(out), flush=True)


def contender(kind: str, paths: list[Path], effort: int, quality: int = QUALITY, threads: int = 1,
              concurrency: int = 0) -> dict[str, Any]:
    os.sync()  # what earlier runs (or other programs) left to write back is not written back in this one
    cmd = [sys.executable, __file__, "--run", kind, "--effort", str(effort), "--quality", str(quality),
           "--threads", str(threads),
           "--concurrency", str(concurrency), "--paths", json.dumps([str(p) for p in paths])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:  # Ctrl-C: let the child stop its nats-server and S3 endpoint
        proc.terminate()
        proc.wait(30)
        raise
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{kind} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    out: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    cpu = out["cpu_ms_per_image"]
    detail = "   CPU per image: " + ", ".join(f"{k} {v:.0f} ms" for k, v in cpu.items())
    print(f"  {out['name']:<28} {out['settings']:<42} {out['per_s']:5.2f} images/s{detail}", flush=True)
    if "timeline" in out:
        t = out["timeline"]
        threads = ", ".join(f"{k} {v:.1f}" for k, v in t["cpu_ms_per_image"].items())
        print(f"    CPU threads' first render starts {' / '.join(f'{e:.0f}' for e in t['first_starts_ms'])} ms, "
              "last render ends "
              f"{' / '.join(f'{e:.0f}' for e in t['last_ends_ms'])} of {t['wall_ms']:.0f} ms "
              f"(renders {'/'.join(map(str, t['renders_per_thread']))}), rendering {100 * t['render_busy']:.0f} % "
              f"of the time; process CPU ms/image: {threads}; machine busy {t['machine_busy'][0]:.2f} cores "
              f"(stolen {t['machine_busy'][1]:.2f}); botocore repeats {t['botocore_requests']}; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender, interleaved")
    parser.add_argument("--stage-effort", type=int, default=None, help="default: the built-in preset's")
    parser.add_argument("--stage-quality", type=int, default=None, help="default: the built-in preset's")
    parser.add_argument("--stage-concurrency", type=int, default=0, help="handlers in flight (default: the setting's)")
    parser.add_argument("--sharp-effort", type=int, default=4, help="sharp's WebP effort (its default: 4)")
    parser.add_argument("--all", action="store_true",
                        help="also: bare pyvips + S3 (the ceiling), the WebP effort sweep, default libvips "
                             "threads, Pillow")
    parser.add_argument("--efforts", default="0,2,4", help="WebP efforts of the --all sweep")
    parser.add_argument("--cache", default=str(ROOT / ".jetmedia" / "bench-photos"))
    parser.add_argument("--run", choices=["vips", "vips-s3", "pillow", "sharp", "stage"], help=argparse.SUPPRESS)
    parser.add_argument("--effort", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--quality", type=int, default=QUALITY, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_one(args)
        return

    from services.variant.presets import BUILTIN as BUILT_IN

    display = next(p for p in BUILT_IN if p.name == "display")
    stage_effort, stage_quality = BUILTIN, BUILTIN  # the stage's own presets, unless asked otherwise
    if args.stage_effort is not None or args.stage_quality is not None:
        stage_effort = display.e if args.stage_effort is None else args.stage_effort
        stage_quality = display.q if args.stage_quality is None else args.stage_quality
    paths = make_photos(args.count, args.width, args.height, Path(args.cache))
    mean_mb = statistics.mean(p.stat().st_size for p in paths) / 1e6
    load = os.getloadavg()
    print(f"{len(paths)} photos {args.width}×{args.height} ({mean_mb:.1f} MB mean JPEG), {os.cpu_count()} cores, "
          f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; thumb {THUMB} + display {DISPLAY} px WebP; "
          f"{args.rounds} interleaved round(s)", flush=True)

    import pyvips

    pyvips.concurrency_set(os.cpu_count() or 2)
    for path in paths[:QUALITY_SAMPLES]:
        reference(path)  # made once, cached beside the photo, before any contender is timed
    why_not = sharp_ready()
    if why_not:
        print(why_not, flush=True)
    # (kind, WebP effort, quality, libvips threads per image, handlers in flight)
    plan: list[tuple[str, int, int, int, int]] = [("stage", stage_effort, stage_quality, 1, args.stage_concurrency)]
    if not why_not:
        plan.append(("sharp", args.sharp_effort, QUALITY, 1, 0))
    plan.append(("vips", stage_effort, stage_quality, 1, 0))
    if args.all:
        efforts = sorted({int(e) for e in args.efforts.split(",") if e.strip()} - {stage_effort})
        sweep_quality = display.q if stage_quality == BUILTIN else stage_quality
        plan += [("vips-s3", stage_effort, stage_quality, 1, 0),
                 *(("vips", e, sweep_quality, 1, 0) for e in efforts),
                 ("vips", stage_effort, stage_quality, 0, 0), ("pillow", 4, QUALITY, 1, 0)]
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(plan))}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}:", flush=True)
        order = list(enumerate(plan))
        if round_ % 2:
            order.reverse()  # alternate the order: neither side always runs first on a warm machine
        for i, (kind, effort, quality, threads, concurrency) in order:
            runs[i].append(contender(kind, paths, effort, quality, threads, concurrency))
    rows = [max(runs[i], key=lambda r: r["per_s"]) for i in range(len(plan))]
    print_table(rows)
    stage = rows[0]
    if why_not:
        return
    sharp = rows[1]
    ratios = sorted(s["per_s"] / p["per_s"] for s, p in zip(runs[0], runs[1], strict=True))
    stage_cpu, sharp_cpu = sum(stage["cpu_ms_per_image"].values()), sum(sharp["cpu_ms_per_image"].values())
    print(
        f"\npipeline vs sharp, images/s: {stage['per_s'] / sharp['per_s']:.2f}× (best of each), "
        f"{statistics.median(ratios):.2f}× (median of the rounds' own ratios; rounds "
        f"{', '.join(f'{r:.2f}' for r in ratios)}) (target ≥ 1.5); CPU per image {stage_cpu:.0f} ms "
        f"(pipeline + S3 + NATS) vs {sharp_cpu:.0f} ms (node)\n"
        f"display WebP bytes {100 * (stage['display_bytes'] / sharp['display_bytes'] - 1):+.1f} % (≤ +5 %), "
        f"PSNR vs the full-size lanczos3 reference {stage['psnr_ref'] - sharp['psnr_ref']:+.2f} dB (≥ −0.2); "
        f"thumb bytes {100 * (stage['thumb_bytes'] / sharp['thumb_bytes'] - 1):+.1f} %"
    )
    if args.all:
        print(f"\nresize kernel after JPEG shrink-on-load, 1600 px WebP q{display.q} effort {display.e} "
              f"(first {min(QUALITY_SAMPLES, len(paths))} photos):")
        print("| kernel | mean display | PSNR vs own resize | PSNR vs full-size reference |")
        print("|---|---:|---:|---:|")
        for k in kernels(paths, display.e, display.q):
            print(f"| {k['kernel']} | {k['bytes'] / 1024:.1f} KiB | {k['psnr']:.2f} dB | {k['psnr_ref']:.2f} dB |")


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print("| contender | settings | images/s | p95 per image | CPU per image | peak RSS | mean thumb | mean display "
          "| PSNR vs own resize | PSNR vs full-size ref |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cpu = " + ".join(f"{v:.0f}" for v in r["cpu_ms_per_image"].values())
        print(f"| {r['name']} | {r['settings']} | {r['per_s']:.2f} | {r['p95_ms']:.0f} ms | {cpu} ms "
              f"| {r['rss_mb']:.0f} MB "
              f"| {r['thumb_bytes'] / 1024:.1f} KiB | {r['display_bytes'] / 1024:.1f} KiB | {r['psnr']:.2f} dB "
              f"| {r['psnr_ref']:.2f} dB |")


if __name__ == "__main__":
    main()
