"""An encode that starts while its source still arrives (work.Source, work.feed): ffmpeg reads the
bytes through a pipe as they land, the output is whole, and a download that fails midway is the
error the encode reports, not what ffmpeg made of a short input (it exits 0 on a truncated MKV)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from services.transcode import presets
from services.transcode.probe import probe
from services.transcode.samples import lavfi
from services.transcode.work import Arriving, Source, encode
from shared.config import Settings
from shared.runtime import Context, Services


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(transcode_x264_preset="ultrafast")


async def _arrive(path: Path, data: bytes, arriving: Arriving, fail_at: int | None) -> None:
    """Write `data` in pieces, a pause after each, as a slow download would."""
    with open(path, "r+b", buffering=0) as out:
        done = 0
        for start in range(0, len(data), len(data) // 8 + 1):
            if fail_at is not None and start >= fail_at:
                arriving.end(failed=True)
                raise ConnectionError("the S3 server went away mid-body")
            piece = data[start:start + len(data) // 8 + 1]
            out.write(piece)
            done += len(piece)
            arriving.wrote(done)
            await asyncio.sleep(0.1)
    arriving.end(failed=False)


async def _encode_arriving(services: Services, tmp_path: Path, fail_at: int | None) -> tuple[str, Source]:
    data = lavfi("mkv", 3.0)
    path = tmp_path / "source"
    path.write_bytes(data[:1])  # the probe reads through Arriving, which waits for what it asks
    with Arriving(str(path), len(data)) as arriving:
        done = asyncio.ensure_future(_arrive(path, data, arriving, fail_at))
        facts = await asyncio.to_thread(probe, str(path), len(data), reader=arriving)
        source = Source(str(path), facts, arriving, done)
        assert source.streamable and not done.done()  # the encode below starts before the download ends
        ctx = Context(services, "transcode", None, 1)
        [preset] = presets.choose("video", ["mp4"], services.settings)
        out = str(tmp_path / "out.mp4")
        try:
            await encode(ctx, source, facts, preset, out, None, time.monotonic() + 60)
        finally:
            await asyncio.gather(done, return_exceptions=True)
    return out, source


async def test_an_encode_reads_the_source_while_it_arrives(services: Services, tmp_path: Path) -> None:
    out, source = await _encode_arriving(services, tmp_path, fail_at=None)
    made = await asyncio.to_thread(lambda: probe(out, os.path.getsize(out)))
    assert made.video is not None and made.audio is not None
    assert made.duration == pytest.approx(source.facts.duration, abs=0.2)


async def test_a_download_that_fails_midway_is_the_encodes_error(services: Services, tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="went away"):
        await _encode_arriving(services, tmp_path, fail_at=len(lavfi("mkv", 3.0)) // 2)
