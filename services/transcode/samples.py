"""Audio and video made on the spot by ffmpeg's own generators (lavfi `sine`, `testsrc2`):
the demo, the tests and the bench use real media in real containers, no downloads."""

from __future__ import annotations

import os
import subprocess
import tempfile

from .ffmpeg import ffmpeg_exe

# container -> (muxer, audio encoder args, video encoder args or None for audio-only containers)
CONTAINERS: dict[str, tuple[str, list[str], list[str] | None]] = {
    "wav": ("wav", ["-c:a", "pcm_s16le"], None),
    "flac": ("flac", ["-c:a", "flac"], None),
    "ogg": ("ogg", ["-c:a", "libvorbis", "-q:a", "3"], None),
    "m4a": ("ipod", ["-c:a", "aac", "-b:a", "96k"], None),
    "mp3": ("mp3", ["-c:a", "libmp3lame", "-q:a", "5"], None),
    "aiff": ("aiff", ["-c:a", "pcm_s16be"], None),
    "mp4": ("mp4", ["-c:a", "aac", "-b:a", "96k"], ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]),
    "mov": ("mov", ["-c:a", "aac", "-b:a", "96k"], ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]),
    "mkv": ("matroska", ["-c:a", "libopus", "-b:a", "64k"],
            ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]),
    "mts": ("mpegts", ["-c:a", "aac", "-b:a", "96k"],  # AVCHD camcorders: M2TS, 192-byte packets
            ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-mpegts_m2ts_mode", "1"]),
    "webm": ("webm", ["-c:a", "libopus", "-b:a", "64k"],
             ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"]),
}


def lavfi(container: str, seconds: float = 2.0, *, size: str = "320x240", rate: float = 25, audio: bool = True,
          video: bool | None = None, ffmpeg: str | None = None, extra: list[str] | None = None,
          video_seconds: float | None = None) -> bytes:
    """A `seconds`-long file: a 440 Hz tone and/or the moving testsrc2 pattern with a clock
    (`video_seconds` long, when the picture should end before the sound)."""
    muxer, audio_args, video_args = CONTAINERS[container]
    with_video = video_args is not None if video is None else video
    inputs: list[str] = []
    maps: list[str] = []
    if with_video:
        inputs += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate:g}:duration={video_seconds or seconds:g}"]
        maps += [*(video_args or []), "-g", str(int(rate))]
    if audio:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds:g}"]
        maps += audio_args
    with tempfile.TemporaryDirectory(prefix="jetmedia-sample-") as folder:
        out = os.path.join(folder, f"sample.{container}")
        command = [ffmpeg_exe(ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", *inputs, *maps,
                   *(extra or []), "-f", muxer, "-y", out]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        with open(out, "rb") as f:
            return f.read()
