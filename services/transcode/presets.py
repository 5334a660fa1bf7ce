"""Transcode presets: what each output is, as ffmpeg arguments built from the probe's facts.

Audio: MP3 (LAME VBR V2, ~190 kbit/s), Opus in Ogg (128 kbit/s VBR), AAC in M4A (optional).
Video: MP4 (H.264 High + AAC, `+faststart` so playback starts before the download ends), WebM
(VP9 + Opus, optional). Video is fitted inside 1920x1080 (either orientation), never upscaled,
frame rate capped; metadata (GPS, device names) is dropped, as the image variants do.
Which presets run is configured (`JETMEDIA_TRANSCODE_AUDIO_PRESETS` / `..._VIDEO_PRESETS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.config import Settings
from shared.runtime import Reject

from .probe import Probe


@dataclass(frozen=True)
class Preset:
    name: str
    media: Literal["audio", "video"]
    ext: str
    muxer: str
    content_type: str
    audio: tuple[str, ...]  # audio encoder arguments
    video: tuple[str, ...] = ()  # video encoder arguments (video presets)
    extra: tuple[str, ...] = ()  # muxer flags


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("mp3", "audio", "mp3", "mp3", "audio/mpeg", ("-c:a", "libmp3lame", "-q:a", "2")),
        Preset("opus", "audio", "opus", "ogg", "audio/ogg", ("-c:a", "libopus", "-b:a", "128k", "-vbr", "on")),
        Preset("aac", "audio", "m4a", "ipod", "audio/mp4", ("-c:a", "aac", "-b:a", "192k"),
               extra=("-movflags", "+faststart")),
        Preset("mp4", "video", "mp4", "mp4", "video/mp4", ("-c:a", "aac", "-b:a", "128k"),
               video=("-c:v", "libx264", "-crf", "23", "-profile:v", "high", "-pix_fmt", "yuv420p"),
               extra=("-movflags", "+faststart")),
        Preset("webm", "video", "webm", "webm", "video/webm", ("-c:a", "libopus", "-b:a", "128k"),
               video=("-c:v", "libvpx-vp9", "-crf", "33", "-b:v", "0", "-row-mt", "1", "-pix_fmt", "yuv420p")),
    )
}
_FAST_X264 = {"ultrafast", "superfast", "veryfast"}


def choose(media: str, requested: list[str] | None, settings: Settings) -> list[Preset]:
    """The presets for this media: the message's list, else the configured one. Audio presets
    apply to video too (an audio track out of a recording); video presets never to audio."""
    configured = settings.transcode_video_presets if media == "video" else settings.transcode_audio_presets
    names = requested or list(configured)
    chosen = []
    for name in names:
        preset = PRESETS.get(name)
        if preset is None:
            raise Reject(f"unknown transcode preset {name!r}; known: {', '.join(PRESETS)}")
        if preset.media == "video" and media != "video":
            raise Reject(f"preset {name!r} needs a video stream; the file has only audio")
        chosen.append(preset)
    return chosen


def fit(settings: Settings, *, anamorphic: bool = False) -> str:
    """Scale filter: inside max_height x (16:9 of it), either orientation, never up, even sizes.
    Anamorphic video (DV/DVD 720x576 shown 16:9, HDV 1440x1080 shown 1920x1080) is widened to
    its display width (`iw*sar`) and its SAR reset to square pixels: a JPEG poster has no pixel
    aspect a browser honours, and the sizes in the job record are then the ones shown
    (`reset_sar` needs ffmpeg 7.1+, so square-pixel video, nearly all of it, does without)."""
    short, long = settings.transcode_max_height, settings.transcode_max_height * 16 // 9
    w = "iw*sar" if anamorphic else "iw"
    return (f"scale=w='min({w},if(gte({w},ih),{long},{short}))':h='min(ih,if(gte({w},ih),{short},{long}))'"
            ":force_original_aspect_ratio=decrease:force_divisible_by=2" + (":reset_sar=1" if anamorphic else ""))


# HDR (HLG, PQ) to SDR BT.709, 8-bit: reference white (203 cd/m², BT.2408) becomes SDR white and
# brighter highlights clip. Without it the MP4 is 8-bit video tagged HLG/PQ, which players that
# ignore the tags (Firefox, many Android ones) and every JPEG viewer show dull and washed out
# (a red of (200, 30, 30) came out (141, 60, 39)). Costs ~1/3 more encode CPU, on HDR sources only
# (a float tone-mapping curve, `tonemap=mobius`, costs twice the encode: measured on 1080p HLG).
TO_SDR = "zscale=p=bt709:t=bt709:m=bt709:r=tv:npl=203,format=yuv420p"


# Interlaced sources (1080i AVCHD camcorders, DV, broadcast captures) are deinterlaced before
# scaling, one frame per frame (25i stays 25p); only frames flagged interlaced are touched.
DEINTERLACE = "bwdif=mode=send_frame:deint=interlaced"


def video_filters(facts: Probe, settings: Settings, *, fps: bool = True) -> str:
    """Deinterlace, fit, frame rate cap, and HDR to SDR: the `-vf` of the MP4/WebM and of the poster."""
    assert facts.video is not None
    filters = [DEINTERLACE] if facts.video.interlaced else []
    filters.append(fit(settings, anamorphic=facts.video.anamorphic))
    if fps and facts.video.fps and facts.video.fps > settings.transcode_max_fps:
        filters.append(f"fps={settings.transcode_max_fps:g}")
    if facts.video.hdr:
        filters.append(TO_SDR)
    return ",".join(filters)


def output_args(preset: Preset, facts: Probe, settings: Settings) -> list[str]:
    """Everything after the input: stream choice, filters, encoders, muxer."""
    args: list[str] = []
    if preset.media == "video":
        assert facts.video is not None
        args += ["-map", f"0:{facts.video.index}"]
        args += ["-vf", video_filters(facts, settings), *preset.video, *_speed(preset, settings)]
    else:
        args += ["-vn"]
    if facts.audio is not None:
        args += ["-map", f"0:{facts.audio.index}", *preset.audio]
        if facts.audio.channels and facts.audio.channels > 2:
            args += ["-ac", "2"]
    elif preset.media == "audio":
        raise Reject("the file has no audio stream")
    else:
        args += ["-an"]
    if settings.transcode_threads:
        args += ["-threads", str(settings.transcode_threads)]
    args += ["-map_metadata", "-1", "-map_chapters", "-1", "-sn", "-dn", *preset.extra, "-f", preset.muxer]
    return args


def _speed(preset: Preset, settings: Settings) -> list[str]:
    speed = settings.transcode_x264_preset
    if preset.name == "mp4":
        return ["-preset", speed]
    if preset.name == "webm":  # VP9's closest equivalents of the x264 speed setting
        return ["-deadline", "realtime", "-cpu-used", "8"] if speed in _FAST_X264 else ["-deadline", "good",
                                                                                       "-cpu-used", "4"]
    return []


def poster_at(facts: Probe) -> float:
    """10 % into the video (max 10 s), past fades from black."""
    return min(facts.duration * 0.1, 10.0)


def poster_args(facts: Probe, settings: Settings, at: float | None = None) -> tuple[list[str], list[str]]:
    """(input options, output options) for one JPEG frame at `at` seconds (default `poster_at`),
    sized and toned like the MP4."""
    assert facts.video is not None
    at = poster_at(facts) if at is None else at
    return (["-ss", f"{at:.3f}"],
            ["-map", f"0:{facts.video.index}", "-frames:v", "1", "-vf", video_filters(facts, settings, fps=False),
             "-q:v", "3", "-map_metadata", "-1", "-an", "-sn", "-dn", "-f", "image2", "-update", "1"])


def check(settings: Settings) -> None:
    """Start-up check: every configured preset name exists and suits its media."""
    for media, names in (("audio", settings.transcode_audio_presets), ("video", settings.transcode_video_presets)):
        for name in names:
            preset = PRESETS.get(name)
            if preset is None:
                raise ValueError(f"unknown transcode preset {name!r} in JETMEDIA_TRANSCODE_{media.upper()}_PRESETS; "
                                 f"known: {', '.join(PRESETS)}")
            if media == "audio" and preset.media == "video":
                raise ValueError(f"preset {name!r} makes video; it cannot be an audio preset")
