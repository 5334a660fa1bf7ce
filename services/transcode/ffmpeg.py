"""Running ffmpeg: one child process, watched from the event loop, always reaped.

- the binary is the imageio-ffmpeg wheel's static build (x264, opus, lame, vpx) unless
  `JETMEDIA_FFMPEG` names another;
- inputs are local files only: `-protocol_whitelist file,pipe` and the demuxer forced to the one
  the probe found, so ffmpeg never re-guesses a file into a playlist; `pipe:0` is the local
  source fed while it still downloads (work.py), through `stdin`;
- `-progress pipe:1` gives machine-readable `key=value` blocks; every advance calls
  `on_progress(seconds)` (the job's percent, the stall clock);
- no advance for `stall_timeout` seconds: killed, `Retry` (a starved machine may do better
  next time); past `deadline`: killed, `Reject`;
- whatever happens (error, task cancelled because the job was cancelled, shutdown), the
  `finally` kills and waits for the process: no orphan encodes; a worker killed with SIGKILL
  runs no `finally`, and the kernel kills ffmpeg then (shared/children.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import cache

from shared.children import dying_with_parent
from shared.runtime import Reject, Retry

log = logging.getLogger("jetmedia.transcode.ffmpeg")

INPUT_GUARD = ("-protocol_whitelist", "file,pipe")
_TRANSIENT = ("No space left on device", "Cannot allocate memory", "Resource temporarily unavailable",
              "Too many open files")
ProgressCallback = Callable[[float], Awaitable[None]]
_DIE_WITH_US = dying_with_parent(signal.SIGKILL)


@cache
def _wheel_ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_exe(override: str | None = None) -> str:
    """`JETMEDIA_FFMPEG` when set, else the binary the imageio-ffmpeg wheel installed."""
    return override or _wheel_ffmpeg()


class Stalled(Retry):
    """ffmpeg stopped advancing; killed. Transient: the machine may have been starved."""


async def run_ffmpeg(
    exe: str,
    args: Sequence[str],
    *,
    on_progress: ProgressCallback | None = None,
    stall_timeout: float = 60.0,
    deadline: float | None = None,
    time_limit: float | None = None,
    stdin: int | None = None,
) -> list[str]:
    """Run `exe <args>` with progress reporting. `deadline` is a `time.monotonic()` instant;
    `time_limit` only names it in the error message. `stdin`: a file descriptor ffmpeg reads as
    `pipe:0` (a pipe's read end), closed here once ffmpeg has its copy, so the writer sees a
    broken pipe when ffmpeg ends early. Returns the last error lines ffmpeg printed although it
    succeeded (it skips undecodable data and says so)."""
    command = [exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-progress", "pipe:1", *args]
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,  # a terminal's Ctrl-C is ours to relay
            preexec_fn=_DIE_WITH_US,  # a worker killed with SIGKILL leaves no encode running on
        )
    finally:
        if stdin is not None:
            os.close(stdin)
    errors: deque[str] = deque(maxlen=20)
    state = _Progress()
    readers = [
        asyncio.create_task(_read_progress(proc.stdout, state, on_progress)),  # type: ignore[arg-type]
        asyncio.create_task(_read_errors(proc.stderr, errors)),  # type: ignore[arg-type]
    ]
    exited = asyncio.create_task(proc.wait())
    try:
        while True:
            await asyncio.wait({exited}, timeout=0.25)
            if exited.done():
                break
            now = time.monotonic()
            if now - state.advanced > stall_timeout:
                raise Stalled(f"ffmpeg stalled: no progress for {stall_timeout:g} s "
                              f"(at {state.seconds:.1f} s of output)")
            if deadline is not None and now > deadline:
                raise Reject(f"transcode took longer than the limit of {time_limit or 0:g} s")
        await asyncio.wait(readers, timeout=5)
    finally:
        await _reap(proc)
        for reader in [*readers, exited]:
            reader.cancel()
    _check_exit(proc.returncode, errors)
    return list(errors)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill (if still running) and wait, even while our task is being cancelled."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            await asyncio.shield(asyncio.wait_for(proc.wait(), timeout=10))
        except (TimeoutError, asyncio.CancelledError):
            # Cancelled again while waiting: finish reaping in the background, then re-raise.
            asyncio.get_running_loop().create_task(proc.wait())
            raise


def _check_exit(code: int | None, errors: deque[str]) -> None:
    if code == 0:
        return
    detail = "; ".join(line for line in errors if line) or "no error output"
    if code is not None and code < 0:
        raise Retry(f"ffmpeg was killed by signal {-code}: {detail}")
    if any(marker in detail for marker in _TRANSIENT):
        raise Retry(f"ffmpeg ran out of resources: {detail}")
    raise Reject(f"ffmpeg could not transcode the file: {detail}")


class _Progress:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.size = 0
        self.advanced = time.monotonic()


async def _read_progress(stream: asyncio.StreamReader, state: _Progress, on_progress: ProgressCallback | None) -> None:
    """`-progress` blocks end with `progress=continue|end`; an advance is more output time or
    more output bytes (audio-less stills advance in bytes only)."""
    seconds, size = state.seconds, state.size
    async for raw in stream:
        key, _, value = raw.decode(errors="replace").strip().partition("=")
        if key == "out_time_us" and value.lstrip("-").isdigit():
            seconds = max(int(value) / 1e6, 0.0)
        elif key == "total_size" and value.isdigit():
            size = int(value)
        elif key == "progress":
            if seconds > state.seconds or size > state.size:
                state.seconds, state.size = max(seconds, state.seconds), max(size, state.size)
                state.advanced = time.monotonic()
                if on_progress is not None:
                    try:
                        await on_progress(state.seconds)
                    except Exception:
                        log.warning("progress callback failed", exc_info=True)


async def _read_errors(stream: asyncio.StreamReader, errors: deque[str]) -> None:
    async for raw in stream:
        errors.append(raw.decode(errors="replace").strip()[:300])
