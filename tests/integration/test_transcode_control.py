"""Long, stalled and cancelled encodes, on the real runtime and a real ffmpeg.

The ffmpeg used here is the real one behind a two-line wrapper (`JETMEDIA_FFMPEG`) that adds
`-readrate 1`: ffmpeg then reads its input at playback speed, so a 6-second clip takes at least
6 seconds on any machine, which is what makes "longer than 2 x ack_wait" and "mid-encode" exact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services import stages
from services.transcode.ffmpeg import ffmpeg_exe
from services.transcode.samples import lavfi
from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.runtime import Services
from tests.helpers import ASSET_STAGES, asset_event, eventually, final_job, processes_with, running, worker_process

CLIP_SECONDS = 6.0


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    wrapper = tmp_path / "ffmpeg-at-playback-speed"
    wrapper.write_text(f'#!/bin/sh\nexec "{ffmpeg_exe()}" -readrate 1 "$@"\n')
    wrapper.chmod(0o755)
    return settings.replace(
        ffmpeg=str(wrapper), transcode_x264_preset="ultrafast", transcode_tmp_dir=str(tmp_path / "transcode"),
        transcode_stall_timeout=2.0,
    )


@pytest.fixture
async def clip(services: Services) -> str:
    key = "uploads/long.mkv"
    await services.storage.put_bytes(key, lavfi("mkv", CLIP_SECONDS, size="160x120", rate=15))
    return key


async def test_long_encode_is_heartbeated_not_redelivered_and_reports_percent(services: Services, clip: str) -> None:
    seen: list[float] = []
    before = _outcomes()
    async with running(services, [stages.load(name) for name in ASSET_STAGES]):
        started = time.monotonic()
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(clip, event_id="long"))
        while (job := await services.jobs.get("long")) is None or not job.final:
            if job is not None and job.percent is not None and (not seen or job.percent != seen[-1]):
                seen.append(job.percent)
            assert time.monotonic() - started < 90, "encode did not finish"
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started

    assert job.status == "ready", job.errors
    assert elapsed > 2 * services.settings.ack_wait
    assert _outcomes(since=before) == {"ok": 1, "retry": 0, "failed": 0, "dead": 0, "skipped": 0}  # one delivery, acked
    assert seen == sorted(seen) and any(0 < p < 100 for p in seen), seen
    assert job.percent == 100.0


async def test_stalled_ffmpeg_is_killed_and_the_message_retried(
    services: Services, clip: str, settings: Settings
) -> None:
    marker = settings.transcode_tmp_dir or ""
    before = _outcomes()
    async with running(services, [stages.load(name) for name in ASSET_STAGES]):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(clip, event_id="stall"))
        await eventually(lambda: _percent_over(services, "stall", 0.0), timeout=30)
        [pid] = processes_with(marker)
        os.kill(pid, signal.SIGSTOP)  # alive, but not advancing
        stopped_at = time.monotonic()
        await eventually(lambda: _gone(pid), timeout=15)
        killed_after = time.monotonic() - stopped_at
        job = await eventually(lambda: final_job(services, "stall"), timeout=60)

    # the stall clock starts at the last progress block, up to ~0.5 s before the SIGSTOP
    assert settings.transcode_stall_timeout - 1 <= killed_after < settings.transcode_stall_timeout + 5
    assert job.status == "ready", job.errors  # the retry was not stopped
    assert _outcomes(since=before) == {"ok": 1, "retry": 1, "failed": 0, "dead": 0, "skipped": 0}


async def test_cancel_mid_encode_kills_ffmpeg_and_leaves_nothing(
    services: Services, clip: str, settings: Settings
) -> None:
    root = Path(settings.transcode_tmp_dir or "")
    before = _outcomes()
    async with running(services, [stages.load(name) for name in ASSET_STAGES]):
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(clip, event_id="cancel-me"))
        await eventually(lambda: _percent_over(services, "cancel-me", 0.0), timeout=30)
        # the poster is made and uploaded while the MP4 still encodes: the cancel must remove it too
        await eventually(lambda: services.storage.head("transcodes/cancel-me/poster.jpg"), timeout=30)
        [pid] = processes_with(str(root))
        assert await services.cancel("cancel-me")
        await eventually(lambda: _gone(pid), timeout=10)
        await eventually(lambda: _empty(root), timeout=10)
        await asyncio.sleep(1.0)  # nothing shows up late either

    assert processes_with(str(root)) == []
    assert _listing(root) == []
    assert await services.storage.list_keys("transcodes/") == []
    job = await services.jobs.get("cancel-me")
    assert job is not None and job.status == "cancelled"
    info = await services.js.consumer_info("JM_TRANSCODE", "transcode")
    assert info.num_pending == 0 and info.num_ack_pending == 0
    assert _outcomes(since=before) == {"ok": 0, "retry": 0, "failed": 0, "dead": 0, "skipped": 1}  # acked, done


def _outcomes(since: dict[str, int] | None = None) -> dict[str, int]:
    """The transcode stage's message outcomes (process-wide counters), minus an earlier reading."""
    counts = {}
    for outcome in ("ok", "retry", "failed", "dead", "skipped"):
        value = REGISTRY.get_sample_value("jetmedia_messages_total", {"stage": "transcode", "outcome": outcome})
        counts[outcome] = int(value or 0) - (since or {}).get(outcome, 0)
    return counts


async def _percent_over(services: Services, job_id: str, floor: float) -> bool:
    job = await services.jobs.get(job_id)
    return job is not None and job.percent is not None and job.percent > floor


async def _gone(pid: int) -> bool:
    return pid not in processes_with("")


async def _empty(root: Path) -> bool:
    return _listing(root) == []


def _listing(root: Path) -> list[str] | None:
    return sorted(os.listdir(root)) if os.path.isdir(root) else None




async def test_a_worker_killed_with_sigkill_takes_its_ffmpeg_with_it(services: Services, settings: Settings) -> None:
    """`kill -9` runs no `finally`: ffmpeg, in its own session, went on encoding as an orphan
    (parent PID 1) for as long as the file took, beside the redelivered job's new encode. The
    clip takes 30 s at playback speed: an ffmpeg still there 5 s after the kill was left behind."""
    await services.storage.put_bytes("uploads/longer.mkv", lavfi("mkv", 30.0, size="160x120", rate=15))
    marker = settings.transcode_tmp_dir or ""
    worker = worker_process(settings, "transcode")
    try:
        async with running(services, [stages.load("upload")]):  # routes the upload to the worker's transcode
            await bus.publish(services.js, m.UPLOAD_ASSET, asset_event("uploads/longer.mkv", event_id="orphan"))
            await eventually(lambda: _percent_over(services, "orphan", 0.0), timeout=60)
        encoding = processes_with(marker)
        assert encoding
        worker.kill()
        worker.wait(timeout=10)
        await eventually(lambda: _all_gone(encoding), timeout=5)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)


async def _all_gone(pids: list[int]) -> bool:
    return all([await _gone(pid) for pid in pids])
