"""The steps of a transcode, shared by the asset stage and the export's per-item transform.

fetch (S3 object -> local temp file, byte limit) -> probe + limits -> encode each preset with
ffmpeg (progress -> job percent) -> probe each output (facts) -> upload at deterministic keys.
Everything local lives in one temp directory that is removed whatever happens; an output that is
uploaded while another encode still runs is deleted again if that encode fails or the job is
cancelled, so a job that does not finish leaves no outputs. A SIGKILLed worker runs no `finally`:
its directories carry its host and pid, and the next process to make one removes those whose
owner is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec

from shared import messages as m
from shared.jobs import Job
from shared.runtime import Context, Reject

from . import presets as p
from .ffmpeg import INPUT_GUARD, ProgressCallback, ffmpeg_exe, run_ffmpeg
from .probe import Probe, check_limits, probe

log = logging.getLogger("jetmedia.transcode")
PERCENT_EVERY = 1.0  # seconds between job-record progress writes
WORKSPACE_PREFIX = "jetmedia-transcode-"
UNOWNED_AGE = 24 * 3600.0  # seconds after which a workspace without an owner (older naming) is removed
_reaped: set[str] = set()  # temp roots this process has already swept


@dataclass(frozen=True)
class Encoded:
    preset: str
    path: str
    key: str
    content_type: str
    format: str
    facts: Probe | None = None  # the output's own probe (None for the poster JPEG)


@contextlib.asynccontextmanager
async def workspace(ctx: Context) -> AsyncIterator[str]:
    """A private temp directory, always removed (also when the task is cancelled)."""
    root = ctx.settings.transcode_tmp_dir
    if root:
        os.makedirs(root, exist_ok=True)
    base = root or tempfile.gettempdir()
    if base not in _reaped:
        _reaped.add(base)
        reap_stale(base)
    path = tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-{socket.gethostname()}-", dir=root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def reap_stale(base: str) -> list[str]:
    """Remove the workspaces under `base` whose owning process (on this host) is gone: what a
    SIGKILLed or crashed worker left, sources included. Another host's (a shared volume) and
    live processes' are left alone. Returns the paths removed."""
    host = socket.gethostname()
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(WORKSPACE_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        if _stale(entry, host):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    if removed:
        log.info("removed %d temp dir(s) of transcode workers that are gone: %s", len(removed), ", ".join(removed))
    return removed


def _stale(entry: os.DirEntry[str], host: str) -> bool:
    pid_text, _, rest = entry.name[len(WORKSPACE_PREFIX):].partition("-")
    owner_host = rest.rsplit("-", 1)[0]
    if not pid_text.isdigit() or not rest:  # named before owners were recorded: by age only
        try:
            return time.time() - entry.stat(follow_symlinks=False).st_mtime > UNOWNED_AGE
        except OSError:
            return False
    if owner_host != host:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


async def fetch(ctx: Context, bucket: str, key: str, folder: str) -> tuple[str, int]:
    """Download the source to a local file (ffmpeg only ever reads local files)."""
    limit = ctx.settings.max_source_bytes
    info = await ctx.storage.head(key, bucket)
    if info is None:
        raise Reject(f"source object s3://{bucket}/{key} does not exist")
    if info.size > limit:
        raise Reject(f"source is {info.size} bytes, over the limit of {limit}")
    path = os.path.join(folder, "source")
    size = 0
    with open(path, "wb") as out:
        async for piece in ctx.storage.iter_bytes(key, bucket):
            size += len(piece)
            if size > limit:  # the object changed under us
                raise Reject(f"source is over the limit of {limit} bytes")
            out.write(piece)
    ctx.count_bytes("in", size)
    return path, size


async def inspect(ctx: Context, path: str, size: int) -> Probe:
    facts = await ctx.run_cpu(probe, path, size)
    check_limits(facts, ctx.settings)
    return facts


class JobPercent:
    """Turns ffmpeg's output time into the job record's percent (at most one write a second)
    and tells the runtime the handler advances."""

    def __init__(self, ctx: Context, job: str | None, total_seconds: float) -> None:
        self.ctx = ctx
        self.job = job
        self.total = max(total_seconds, 1e-3)
        self.written = 0.0
        self.last_write = 0.0

    def step(self, done_before: float) -> ProgressCallback:
        async def report(seconds: float) -> None:
            await self.at(done_before + seconds)
        return report

    async def at(self, seconds: float, *, force: bool = False) -> None:
        self.ctx.progress()
        percent = round(min(100.0, 100.0 * seconds / self.total), 1)
        now = time.monotonic()
        if self.job is None or (not force and (now - self.last_write < PERCENT_EVERY or percent <= self.written)):
            return
        self.last_write, self.written = now, percent

        def change(job: Job) -> Job:
            if job.final or job.percent == percent:
                return job
            return msgspec.structs.replace(job, percent=percent)

        try:
            await self.ctx.jobs.update(self.job, change)
        except KeyError:  # no job record (a direct request): nothing to report into
            self.job = None


async def encode(ctx: Context, source: str, facts: Probe, preset: p.Preset, out: str,
                 progress: ProgressCallback | None, deadline: float) -> Probe:
    """Encode one preset; returns the output's probe (its facts, already checked)."""
    settings = ctx.settings
    args = [*INPUT_GUARD, "-f", facts.demuxer, "-i", f"file:{source}",
            *p.output_args(preset, facts, settings), "-y", f"file:{out}"]
    complaints = await run_ffmpeg(ffmpeg_exe(settings.ffmpeg), args, on_progress=progress,
                                  stall_timeout=settings.transcode_stall_timeout, deadline=deadline,
                                  time_limit=settings.transcode_time_limit)
    return await _check_output(ctx, out, facts, preset, complaints)


async def _check_output(ctx: Context, out: str, facts: Probe, preset: p.Preset, complaints: list[str]) -> Probe:
    """ffmpeg skips undecodable data and exits 0: an output clearly shorter than the streams it
    was made from means the source is damaged (a truncated upload), and must not pass as a
    transcode."""
    made = await ctx.run_cpu(probe, out, _size(out))
    used = [facts.audio] if preset.media == "audio" else [facts.video, facts.audio]
    expected = max((s.duration for s in used if s is not None and s.duration), default=facts.duration)
    if made.duration < expected * 0.9 - 0.5:
        said = "; ".join(dict.fromkeys(line.split("] ", 1)[-1] for line in complaints[-6:]))
        raise Reject(f"damaged media: only {made.duration:.1f} s of {expected:.1f} s could be decoded"
                     + (f" (ffmpeg: {said})" if said else ""))
    return made


async def poster(ctx: Context, source: str, facts: Probe, out: str, deadline: float) -> None:
    before, after = p.poster_args(facts, ctx.settings)
    args = [*INPUT_GUARD, "-f", facts.demuxer, *before, "-i", f"file:{source}", *after, "-y", f"file:{out}"]
    await run_ffmpeg(ffmpeg_exe(ctx.settings.ffmpeg), args, stall_timeout=ctx.settings.transcode_stall_timeout,
                     deadline=deadline, time_limit=ctx.settings.transcode_time_limit)
    if _size(out) == 0:
        raise Reject("could not extract a poster frame: no picture decoded")


async def store(ctx: Context, item: Encoded, uploaded: list[str]) -> m.OutputFile:
    """Upload one output and describe it from its own probe. The key is noted before the PUT
    starts, so a cancel that lands mid-request still knows what to remove."""
    size = _size(item.path)
    uploaded.append(item.key)
    await ctx.storage.upload_file(item.key, item.path, content_type=item.content_type)
    ctx.count_bytes("out", size)
    return await describe(ctx, item, size)


async def forget(ctx: Context, keys: list[str]) -> None:
    """Remove outputs of a job that did not finish (failed or cancelled): no partial results."""
    for key in keys:
        with contextlib.suppress(Exception):
            await ctx.storage.delete(key)


async def describe(ctx: Context, item: Encoded, size: int) -> m.OutputFile:
    if item.format == "jpeg":
        facts = await ctx.run_cpu(_jpeg_size, item.path)
        return m.OutputFile(preset=item.preset, key=item.key, format="jpeg", bytes=size,
                            width=facts[0], height=facts[1])
    made = item.facts if item.facts is not None else await ctx.run_cpu(probe, item.path, size)
    return m.OutputFile(
        preset=item.preset, key=item.key, format=item.format, bytes=size,
        width=made.video.width if made.video else None, height=made.video.height if made.video else None,
        duration=round(made.duration, 3), video_codec=made.video.codec if made.video else None,
        audio_codec=made.audio.codec if made.audio else None, bitrate=made.bitrate,
        fps=made.video.fps if made.video else None,
    )


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _jpeg_size(path: str) -> tuple[int, int]:
    import pyvips

    image = pyvips.Image.new_from_file(path)
    return image.width, image.height


def output_key(asset: str, name: str, ext: str) -> str:
    return f"transcodes/{asset}/{name}.{ext}"


async def transcode_file(ctx: Context, src_key: str, preset: str, *, bucket: str | None = None,
                         key: str | None = None) -> m.OutputFile:
    """One object, one preset, one output in S3: the per-item transform an export can call
    ("export these recordings as MP3"). The output key defaults to a deterministic one derived
    from the source (`transcodes/src-{hash}/{preset}.{ext}`), so a re-run overwrites it.
    Raises `Reject` for input that can never work, like the stage does."""
    bucket = bucket or ctx.settings.bucket
    deadline = time.monotonic() + ctx.settings.transcode_time_limit
    async with workspace(ctx) as folder:
        source, size = await fetch(ctx, bucket, src_key, folder)
        facts = await inspect(ctx, source, size)
        [chosen] = p.choose(facts.media, [preset], ctx.settings)
        tag = "src-" + hashlib.sha256(f"{bucket}/{src_key}".encode()).hexdigest()[:20]
        out = os.path.join(folder, f"{chosen.name}.{chosen.ext}")
        progress = JobPercent(ctx, None, facts.duration)
        made = await encode(ctx, source, facts, chosen, out, progress.step(0.0), deadline)
        item = Encoded(chosen.name, out, key or output_key(tag, chosen.name, chosen.ext), chosen.content_type,
                       chosen.ext, made)
        uploaded: list[str] = []
        try:
            return await store(ctx, item, uploaded)
        except BaseException:  # cancelled mid-upload: leave no output
            await forget(ctx, uploaded)
            raise
