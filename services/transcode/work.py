"""The steps of a transcode, shared by the asset stage and the export's per-item transform.

fetch (S3 object -> local temp file, byte limit; probed while it arrives) + limits -> encode
each preset with ffmpeg (progress -> job percent) -> upload at deterministic keys, and beside
each upload the probe of that output (its facts; a damaged source shows as a short output).
Everything local lives in one temp directory that is removed whatever happens; an output that is
uploaded while another encode still runs is deleted again if that encode fails or the job is
cancelled, so a job that does not finish leaves no outputs. A SIGKILLed worker runs no `finally`:
its directories carry its host and pid, and the next process to make one removes those whose
owner is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import msgspec
from botocore.exceptions import ClientError

from shared import messages as m
from shared.jobs import Job
from shared.runtime import Context, Reject
from shared.storage import is_missing

from . import presets as p
from .ffmpeg import INPUT_GUARD, ProgressCallback, ffmpeg_exe, run_ffmpeg
from .probe import Probe, check_limits, probe

log = logging.getLogger("jetmedia.transcode")
PERCENT_EVERY = 1.0  # seconds between job-record progress writes
READ_SIZE = 4 * 1024 * 1024  # bytes asked of the source's body at a time (it answers with what has arrived)
PIPE_SIZE = 1024 * 1024  # bytes a streamed encode's input pipe holds (Linux' default limit for a user)
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


# Demuxers that read front to back and carry video (where the download is worth hiding: a 20 s
# 720p MKV is 19 MB). Audio files (a few MB, FLAC/Ogg/MP3 could stream too) wait for the whole
# file: two encodes would need two feeds for ~15 ms, and audio's overhead is within noise.
STREAMED = frozenset({"matroska", "mpegts"})


@dataclass
class Source:
    """The local copy of the source, maybe still arriving: `done` is its download. An encode of a
    demuxer that reads front to back (`STREAMED`: MKV/WebM, MPEG-TS) starts before
    the download ends, fed the bytes as they land (`feed`); the rest wait for the whole file."""

    path: str
    facts: Probe
    arriving: Arriving
    done: asyncio.Future[None]

    @property
    def streamable(self) -> bool:
        return self.facts.demuxer in STREAMED and not self.done.done()

    async def whole(self) -> None:
        """Wait for the whole file (its download's error, if it failed)."""
        await asyncio.shield(self.done)


async def fetch(ctx: Context, bucket: str, key: str, folder: str) -> tuple[str, Probe]:
    """The source as a whole local file, probed (see `arrive`)."""
    async with arrive(ctx, bucket, key, folder) as source:
        await source.whole()
        return source.path, source.facts


@contextlib.asynccontextmanager
async def arrive(ctx: Context, bucket: str, key: str, folder: str) -> AsyncIterator[Source]:
    """Download the source to a local file (ffmpeg only ever reads local files) and probe it while
    it arrives; the facts are checked against the limits. Yields once the probe is done, while
    the rest may still arrive (`Source.done`); on the way out an unfinished download is stopped.
    One GET, no HEAD before it: the answer's Content-Length is checked against the byte limit
    before any of the body is read, and a 404/403 means the object is not there (as a HEAD
    would say, one round trip later). A failed download wins over what the probe made of the
    bytes it saw, as if the probe had waited."""
    limit = ctx.settings.max_source_bytes
    try:
        resp = await ctx.storage.client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            raise Reject(f"source object s3://{bucket}/{key} does not exist") from None
        raise
    body = resp["Body"]
    size = int(resp.get("ContentLength") or 0)
    if size > limit:
        async with body:
            raise Reject(f"source is {size} bytes, over the limit of {limit}")
    path = os.path.join(folder, "source")

    async def download(out: io.FileIO, arriving: Arriving) -> None:
        done = 0
        try:
            async with body:  # not `as body`: __aenter__ returns the bare aiohttp response
                while piece := await body.read(READ_SIZE):  # the body checks Content-Length at the end
                    done += len(piece)
                    if done > size:  # more than announced
                        raise Reject(f"source is over the limit of {limit} bytes")
                    view = memoryview(piece)
                    while view:
                        view = view[out.write(view) or 0:]
                    arriving.wrote(done)
        except BaseException:
            arriving.end(failed=True)
            raise
        arriving.end(failed=False)
        ctx.count_bytes("in", size)

    with open(path, "wb", buffering=0) as out, Arriving(path, size) as arriving:
        # Its own thread, not the CPU pool: it mostly waits for bytes (all of them for an MP4
        # whose index is at the end), and its CPU work is a few milliseconds.
        probing = asyncio.ensure_future(asyncio.to_thread(probe, path, size, reader=arriving))
        downloading = asyncio.ensure_future(download(out, arriving))
        try:
            try:
                facts = await asyncio.shield(probing)
            except asyncio.CancelledError:
                raise
            except BaseException:
                await asyncio.wait([downloading])  # the download's failure is the better reason
                if not downloading.cancelled() and downloading.exception() is not None:
                    await downloading
                raise
            check_limits(facts, ctx.settings)
            yield Source(path, facts, arriving, downloading)
        finally:
            arriving.end(failed=True)  # no-op once it ended: wakes readers of a download stopped here
            downloading.cancel()
            await asyncio.gather(probing, downloading, return_exceptions=True)


def feed(source: Source, pipe: int, stop: threading.Event) -> None:
    """Copy the source into `pipe` as it arrives (blocking: run in a thread), then close it:
    ffmpeg reads `pipe:0` to its end. Stops at `stop` (the encode ended) or a broken pipe
    (ffmpeg is gone); raises OSError when the download failed."""
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # fewer wake-ups of both sides
        with open(source.path, "rb", buffering=0) as f:
            sent = 0
            while sent < source.arriving.size and not stop.is_set():
                there = source.arriving.available(sent + 1, stop)
                while sent < there and not stop.is_set():
                    sent += os.sendfile(pipe, f.fileno(), sent, there - sent)
    except BrokenPipeError:
        pass  # ffmpeg stopped reading: its exit status says why
    finally:
        os.close(pipe)


class Arriving(io.RawIOBase):
    """The source as its download writes it, read by the probe: a read waits until the bytes it
    asks for are written (or the download ended), so the probe reads the head of the file while
    the rest still arrives. Most files need a few hundred KB (headers, a few frames); an MP4 with
    its index at the end waits for the end. A failed download fails the reads."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.size = size
        self._file = open(path, "rb")  # closed by close()
        self._arrived = threading.Condition()
        self._written = 0
        self._ended = False
        self._failed = False

    def available(self, at_least: int, stop: threading.Event) -> int:
        """Wait until `at_least` bytes have arrived (or the download ended, or `stop`); returns
        how many have. Raises OSError when the download failed."""
        with self._arrived:
            self._arrived.wait_for(lambda: self._written >= at_least or self._ended or stop.is_set())
            if self._failed:
                raise OSError("the download of the source failed")
            return self._written

    def wake(self) -> None:
        """Wake the waiting readers (one of them was told to stop)."""
        with self._arrived:
            self._arrived.notify_all()

    def wrote(self, total: int) -> None:
        with self._arrived:
            self._written = total
            self._arrived.notify_all()

    def end(self, *, failed: bool) -> None:
        with self._arrived:
            if not self._ended:
                self._ended, self._failed = True, failed
            self._arrived.notify_all()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:  # the announced size, not what has arrived so far
            offset, whence = self.size + offset, os.SEEK_SET
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer: Any) -> int:
        want = min(self._file.tell() + len(buffer), self.size)
        with self._arrived:
            self._arrived.wait_for(lambda: self._written >= want or self._ended)
            if self._failed:
                raise OSError("the download of the source failed")
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()


class JobPercent:
    """Turns ffmpeg's output time into the job record's percent (at most one write a second)
    and tells the runtime the handler advances."""

    def __init__(self, ctx: Context, job: str | None, total_seconds: float) -> None:
        self.ctx = ctx
        self.job = job
        self.total = max(total_seconds, 1e-3)
        self.written = 0.0
        self.last_write = 0.0
        self.writing = asyncio.Lock()  # one write at a time, in order: a late 99 % never follows the 100 %

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

        async with self.writing:
            if self.job is None or percent < self.written:  # gone meanwhile, or a higher one was asked for
                return
            try:
                await self.ctx.jobs.update(self.job, change)
            except KeyError:  # no job record (a direct request): nothing to report into
                self.job = None


async def encode(ctx: Context, source: str | Source, facts: Probe, preset: p.Preset, out: str,
                 progress: ProgressCallback | None, deadline: float) -> list[str]:
    """Encode one preset; returns the error lines ffmpeg printed although it succeeded, for
    `check_output` (which `store` runs beside the upload). A `Source` still arriving in a
    demuxer that reads front to back is fed to ffmpeg through a pipe as it lands (the encode
    starts when the probe is done, not when the download is); else ffmpeg reads the file. A
    failed download wins over what ffmpeg made of the bytes it got."""
    settings = ctx.settings
    streamed = not isinstance(source, str) and source.streamable
    path = source if isinstance(source, str) else source.path
    args = [*INPUT_GUARD, "-f", facts.demuxer, "-i", "pipe:0" if streamed else f"file:{path}",
            *p.output_args(preset, facts, settings), "-y", f"file:{out}"]

    def run(stdin: int | None = None) -> Awaitable[list[str]]:
        return run_ffmpeg(ffmpeg_exe(settings.ffmpeg), args, on_progress=progress,
                          stall_timeout=settings.transcode_stall_timeout, deadline=deadline,
                          time_limit=settings.transcode_time_limit, stdin=stdin)

    if isinstance(source, str):
        return await run()
    if not streamed:
        await source.whole()
        return await run()
    reads, writes = os.pipe()  # run_ffmpeg closes `reads`, the feeder `writes`
    stop = threading.Event()
    feeding = asyncio.ensure_future(asyncio.to_thread(feed, source, writes, stop))
    try:
        complaints = await run(reads)
    except asyncio.CancelledError:
        await _stop_feeding(source, feeding, stop)
        raise
    except BaseException:
        if await _stop_feeding(source, feeding, stop) is not None:
            await source.whole()  # the download failed: its error, not ffmpeg's
        raise
    if (failed := await _stop_feeding(source, feeding, stop)) is not None:  # ffmpeg is gone: nothing to feed
        await source.whole()  # ffmpeg ended on a short input: the download's error
        raise failed
    return complaints


async def _stop_feeding(source: Source, feeding: asyncio.Future[None], stop: threading.Event) -> BaseException | None:
    """Stop the feeder thread and wait for it; what it failed with (the download's end), if anything."""
    stop.set()
    source.arriving.wake()
    await asyncio.wait([feeding])
    return None if feeding.cancelled() else feeding.exception()


async def check_output(ctx: Context, out: str, facts: Probe, preset: p.Preset, complaints: list[str]) -> Probe:
    """The output's own probe (its facts). ffmpeg skips undecodable data and exits 0: an output
    clearly shorter than the streams it was made from means the source is damaged (a truncated
    upload), and must not pass as a transcode."""
    made = await ctx.run_cpu(probe, out, _size(out))
    used = [facts.audio] if preset.media == "audio" else [facts.video, facts.audio]
    expected = max((s.duration for s in used if s is not None and s.duration), default=facts.duration)
    if made.duration < expected * 0.9 - 0.5:
        said = "; ".join(dict.fromkeys(line.split("] ", 1)[-1] for line in complaints[-6:]))
        raise Reject(f"damaged media: only {made.duration:.1f} s of {expected:.1f} s could be decoded"
                     + (f" (ffmpeg: {said})" if said else ""))
    return made


async def poster(ctx: Context, source: str | Source, facts: Probe, out: str, deadline: float) -> None:
    """One frame, sought to: the whole file first. A video whose pictures all come before that
    point (one still frame under a song, a screen recording that stopped changing) has no frame
    there: ffmpeg then fails to open its encoder ("Non full-range YUV is non-standard") or
    writes nothing, and the first frame is taken instead."""
    if not isinstance(source, str):
        await source.whole()
        source = source.path
    try:
        await _frame(ctx, source, facts, out, deadline, p.poster_at(facts))
    except Reject:
        if p.poster_at(facts) == 0 or time.monotonic() > deadline:
            raise
        await _frame(ctx, source, facts, out, deadline, 0.0)


async def _frame(ctx: Context, source: str, facts: Probe, out: str, deadline: float, at: float) -> None:
    before, after = p.poster_args(facts, ctx.settings, at)
    args = [*INPUT_GUARD, "-f", facts.demuxer, *before, "-i", f"file:{source}", *after, "-y", f"file:{out}"]
    await run_ffmpeg(ffmpeg_exe(ctx.settings.ffmpeg), args, stall_timeout=ctx.settings.transcode_stall_timeout,
                     deadline=deadline, time_limit=ctx.settings.transcode_time_limit)
    if _size(out) == 0:
        raise Reject(f"could not extract a poster frame at {at:.3f} s: no picture decoded")


async def store(ctx: Context, item: Encoded, uploaded: list[str],
                check: Awaitable[Probe] | None = None) -> m.OutputFile:
    """Upload one output and describe it from its own probe. `check` (the probe that checks an
    encode, `check_output`) runs beside the PUT, not before it: the last output's upload is the
    job's tail. A failed check is raised once the PUT has ended, in place of the upload's own
    outcome, and the caller's `forget` removes the object. The key is noted before the PUT
    starts, so a cancel that lands mid-request still knows what to remove."""
    size = _size(item.path)
    uploaded.append(item.key)
    put = ctx.storage.upload_file(item.key, item.path, content_type=item.content_type, fast=ctx.services.fast_s3)
    if check is None:
        await put
    else:
        made, sent = await asyncio.gather(check, put, return_exceptions=True)
        if isinstance(made, BaseException):
            raise made
        if isinstance(sent, BaseException):
            raise sent
        item = dataclasses.replace(item, facts=made)
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


def discard(path: str) -> None:
    """Remove a file that is no longer needed, if it is still there (blocking: run in a thread)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


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
        source, facts = await fetch(ctx, bucket, src_key, folder)
        [chosen] = p.choose(facts.media, [preset], ctx.settings)
        tag = "src-" + hashlib.sha256(f"{bucket}/{src_key}".encode()).hexdigest()[:20]
        out = os.path.join(folder, f"{chosen.name}.{chosen.ext}")
        progress = JobPercent(ctx, None, facts.duration)
        complaints = await encode(ctx, source, facts, chosen, out, progress.step(0.0), deadline)
        item = Encoded(chosen.name, out, key or output_key(tag, chosen.name, chosen.ext), chosen.content_type,
                       chosen.ext)
        uploaded: list[str] = []
        try:
            return await store(ctx, item, uploaded, check_output(ctx, out, facts, chosen, complaints))
        except BaseException:  # a damaged source, or cancelled mid-upload: leave no output
            await forget(ctx, uploaded)
            raise
