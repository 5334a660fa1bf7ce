"""The ffmpeg wrapper, probe and presets on their own: real ffmpeg, local inputs, no bus."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.transcode.ffmpeg import INPUT_GUARD, Stalled, ffmpeg_exe, run_ffmpeg
from services.transcode.presets import PRESETS, choose, output_args
from services.transcode.probe import Probe, StreamFacts, probe, refuse_playlists
from services.transcode.samples import lavfi
from services.transcode.work import Arriving
from shared.config import Settings
from shared.runtime import Reject, Retry
from tests.helpers import processes_with

FFMPEG = ffmpeg_exe()


def _tone(seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=duration={seconds:g}"]


async def test_progress_reports_output_seconds_up_to_the_end(tmp_path: Path) -> None:
    seen: list[float] = []

    async def record(seconds: float) -> None:
        seen.append(seconds)

    out = tmp_path / "tone.mp3"
    await run_ffmpeg(FFMPEG, [*_tone(3), "-c:a", "libmp3lame", "-y", str(out)], on_progress=record)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(3.0, abs=0.1)
    assert probe(str(out)).duration == pytest.approx(3.0, abs=0.1)


async def test_cancelling_the_task_kills_ffmpeg(tmp_path: Path) -> None:
    marker = str(tmp_path / "cancelled.mp3")
    started = asyncio.Event()

    async def first(_seconds: float) -> None:
        started.set()

    task = asyncio.create_task(run_ffmpeg(
        FFMPEG, ["-readrate", "1", *_tone(60), "-c:a", "libmp3lame", "-y", marker], on_progress=first))
    await asyncio.wait_for(started.wait(), 20)
    [pid] = processes_with(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_with(marker) == [] and pid not in processes_with("")


async def test_a_stopped_ffmpeg_is_killed_as_stalled(tmp_path: Path) -> None:
    marker = str(tmp_path / "stalled.mp3")
    task = asyncio.create_task(run_ffmpeg(
        FFMPEG, ["-readrate", "1", *_tone(60), "-c:a", "libmp3lame", "-y", marker], stall_timeout=1.0))
    pid = await _pid_of(marker)
    await asyncio.sleep(0.7)
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(Stalled, match="no progress for 1 s"):
        await asyncio.wait_for(task, 15)
    assert isinstance(Stalled("x"), Retry)  # stalls are retried; the machine may have been starved
    assert processes_with(marker) == []


async def test_past_the_overall_limit_ffmpeg_is_killed_and_the_input_rejected(tmp_path: Path) -> None:
    marker = str(tmp_path / "slow.mp3")
    started = time.monotonic()
    with pytest.raises(Reject, match="longer than the limit of 1 s"):
        await run_ffmpeg(FFMPEG, ["-readrate", "1", *_tone(60), "-c:a", "libmp3lame", "-y", marker],
                         deadline=started + 1.0, time_limit=1.0)
    assert time.monotonic() - started < 5 and processes_with(marker) == []


async def test_exit_status_becomes_reject_or_retry(tmp_path: Path) -> None:
    with pytest.raises(Reject, match=r"ffmpeg could not transcode the file: .*no_such_encoder"):
        await run_ffmpeg(FFMPEG, [*_tone(1), "-c:a", "no_such_encoder", "-y", str(tmp_path / "x.mp3")])
    marker = str(tmp_path / "killed.mp3")
    task = asyncio.create_task(run_ffmpeg(FFMPEG, ["-readrate", "1", *_tone(60), "-y", marker]))
    os.kill(await _pid_of(marker), signal.SIGKILL)  # the OOM killer, say
    with pytest.raises(Retry, match="killed by signal 9"):
        await task


async def test_no_network_protocol_is_reachable_from_a_crafted_playlist(tmp_path: Path) -> None:
    """Even if a playlist got past the probe, ffmpeg's input guard stops it: nothing connects."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    hls = tmp_path / "list.m3u8"
    hls.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nhttp://127.0.0.1:{port}/seg.ts\n#EXT-X-ENDLIST\n")
    concat = tmp_path / "list.txt"
    concat.write_text(f"ffconcat version 1.0\nfile 'http://127.0.0.1:{port}/a.wav'\n")
    try:
        for demuxer, path in (("hls", hls), ("concat", concat)):
            unsafe = ["-safe", "0"] if demuxer == "concat" else []  # concat's own name check off
            with pytest.raises(Reject, match="Protocol 'http' not on whitelist 'file,pipe'"):
                await run_ffmpeg(FFMPEG, [*INPUT_GUARD, "-f", demuxer, *unsafe, "-i", f"file:{path}",
                                          "-f", "null", "-"])
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()
    with pytest.raises(Reject, match="playlists"):
        probe(str(hls))


@pytest.mark.parametrize(
    "head",
    [b"#EXTM3U\n", b"\xef\xbb\xbf#EXTM3U\n", b"ffconcat version 1.0\n", b"<?xml version='1.0'?><MPD>",
     b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n", b"[playlist]\nFile1=http://x/\n", b"see rtmp://host/app/stream\n"],
)
def test_playlists_and_descriptors_are_refused_by_their_first_bytes(head: bytes) -> None:
    with pytest.raises(Reject):
        refuse_playlists(head)


def test_media_is_not_mistaken_for_a_playlist() -> None:
    refuse_playlists(lavfi("wav", 0.2)[:4096])
    refuse_playlists(lavfi("mp4", 0.2)[:4096])


def test_probe_facts_of_a_video(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    path.write_bytes(lavfi("mkv", 1.0, size="160x120", rate=30))
    facts = probe(str(path), path.stat().st_size)
    assert facts.demuxer == "matroska" and facts.media == "video"
    assert facts.video is not None and (facts.video.codec, facts.video.width, facts.video.height) == ("h264", 160, 120)
    assert facts.video.fps == 30.0
    assert facts.audio is not None and facts.audio.codec == "opus"
    assert facts.duration == pytest.approx(1.0, abs=0.1) and facts.bitrate


@pytest.mark.parametrize("container", ["mkv", "mp4"])  # mp4 without faststart: its index is at the end
def test_a_source_is_probed_while_it_arrives_with_the_same_facts(tmp_path: Path, container: str) -> None:
    data = lavfi(container, 1.0, size="160x120")
    whole = tmp_path / f"whole.{container}"
    whole.write_bytes(data)
    path = str(tmp_path / "arriving")
    with open(path, "wb", buffering=0) as out, Arriving(path, len(data)) as arriving:
        with ThreadPoolExecutor(1) as pool:
            probing = pool.submit(probe, path, len(data), reader=arriving)
            for start in range(0, len(data), 4096):
                out.write(data[start:start + 4096])
                arriving.wrote(min(start + 4096, len(data)))
                assert start + 4096 >= len(data) or container == "mkv" or not probing.done()  # waits for the end
            arriving.end(failed=False)
            assert probing.result(timeout=30) == probe(str(whole), len(data))


def test_a_failed_download_fails_the_probe_that_waits_for_it(tmp_path: Path) -> None:
    data = lavfi("mp4", 1.0, size="160x120")
    path = str(tmp_path / "arriving")
    with open(path, "wb", buffering=0) as out, Arriving(path, len(data)) as arriving:
        out.write(data[:len(data) // 2])
        arriving.wrote(len(data) // 2)
        with ThreadPoolExecutor(1) as pool:
            probing = pool.submit(probe, path, len(data), reader=arriving)
            time.sleep(0.2)
            assert not probing.done()  # the index (at the end) has not arrived
            arriving.end(failed=True)
            with pytest.raises(OSError, match="download of the source failed"):
                probing.result(timeout=30)


def _facts(*, fps: float = 25, channels: int = 2, audio: bool = True, video: bool = True) -> Probe:
    return Probe(
        demuxer="mov", duration=10.0, bitrate=None, bytes=1,
        video=StreamFacts(index=0, codec="h264", width=3840, height=2160, fps=fps) if video else None,
        audio=StreamFacts(index=1, codec="aac", channels=channels) if audio else None,
    )


def test_video_args_cap_size_and_frame_rate_and_downmix() -> None:
    settings = Settings(transcode_x264_preset="medium")
    args = output_args(PRESETS["mp4"], _facts(fps=120, channels=6), settings)
    vf = args[args.index("-vf") + 1]
    assert "min(iw,if(gte(iw,ih),1920,1080))" in vf and "force_original_aspect_ratio=decrease" in vf
    assert "reset_sar" not in vf  # square pixels already: nothing an older ffmpeg lacks
    dv = dataclasses.replace(_facts(), video=StreamFacts(index=0, codec="dvvideo", width=720, height=576,
                                                         anamorphic=True))
    widened = output_args(PRESETS["mp4"], dv, settings)[3]
    assert "min(iw*sar,if(gte(iw*sar,ih),1920,1080))" in widened and widened.endswith(":reset_sar=1")
    assert vf.endswith(",fps=60")
    assert args[args.index("-preset") + 1] == "medium"
    assert args[args.index("-ac") + 1] == "2"
    assert ["-movflags", "+faststart"] == args[args.index("-movflags"):args.index("-movflags") + 2]
    assert "-map_metadata" in args and args[-2:] == ["-f", "mp4"]
    silent = output_args(PRESETS["mp4"], _facts(fps=25, audio=False), settings)
    assert "-an" in silent and "fps=" not in silent[silent.index("-vf") + 1]


def test_audio_args_and_preset_choice() -> None:
    settings = Settings()
    mp3 = output_args(PRESETS["mp3"], _facts(video=False), settings)
    assert ["-c:a", "libmp3lame", "-q:a", "2"] == mp3[mp3.index("-c:a"):mp3.index("-c:a") + 4]  # VBR V2
    assert [p.name for p in choose("audio", None, settings)] == ["mp3", "opus"]
    assert [p.name for p in choose("video", None, settings)] == ["mp4"]
    assert [p.name for p in choose("video", ["mp3", "webm"], settings)] == ["mp3", "webm"]
    with pytest.raises(Reject, match="unknown transcode preset 'flv'"):
        choose("video", ["flv"], settings)
    with pytest.raises(Reject, match="needs a video stream"):
        choose("audio", ["mp4"], settings)
    with pytest.raises(Reject, match="no audio stream"):
        output_args(PRESETS["mp3"], _facts(audio=False), settings)


def test_the_configured_binary_wins() -> None:
    assert ffmpeg_exe("/opt/ffmpeg/bin/ffmpeg") == "/opt/ffmpeg/bin/ffmpeg"
    assert os.access(ffmpeg_exe(), os.X_OK)


async def _pid_of(marker: str) -> int:
    for _ in range(200):
        found = processes_with(marker)
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no ffmpeg process with {marker}")
