"""What a media file holds, asked of libavformat through PyAV: structured facts, no text scraping.

The imageio-ffmpeg wheel ships no ffprobe, and ffmpeg's own stream listing is human-readable
text that changes between versions. PyAV opens the file with the same libavformat API ffprobe
uses and hands back typed values (codec names, durations, sizes), in process, in milliseconds.

It is also the first security gate: the file is opened with only the `file` protocol allowed
and only the container formats we transcode. HLS, DASH and concat playlists are refused before
anything parses them: a crafted playlist can make a demuxer fetch URLs or read other local files.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from io import RawIOBase
from typing import Literal

import av
import av.error
from av.audio.stream import AudioStream
from av.stream import Disposition
from av.video.stream import VideoStream

from shared import messages as m
from shared.config import Settings
from shared.runtime import Reject
from shared.sniff import sniff

# libavformat demuxer names we accept (first name of each family, as `ffmpeg -f` wants it).
ACCEPTED_DEMUXERS = ("mov", "matroska", "ogg", "wav", "w64", "aiff", "flac", "mp3", "aac", "avi", "mpegts")
_ACCEPTED_FAMILIES = {
    "mov": ("mov", "mp4", "m4a", "3gp", "3g2", "mj2"),
    "matroska": ("matroska", "webm"),
}
HUMAN_FORMATS = "MP4/MOV/M4A, MKV/WebM, Ogg, WAV, AIFF, FLAC, MP3, AAC, AVI, MPEG-TS"
# Text playlists some demuxer would follow (HLS, concat, SDP, DASH, Windows/RealMedia playlists).
_PLAYLIST_MARKERS = (b"#EXTM3U", b"ffconcat", b"v=0", b"<?xml", b"<MPD", b"[playlist]", b"#EXT-X", b"<ASX", b"<asx")
PROBE_BYTES = 4096


@dataclass(frozen=True)
class StreamFacts:
    index: int
    codec: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration: float | None = None
    hdr: bool = False  # an HDR transfer (HLG: iPhones since the 12; PQ: HDR10), shown washed out as SDR
    interlaced: bool = False  # fields, not frames (camcorders' 1080i AVCHD, DV, broadcast): combs unless deinterlaced
    anamorphic: bool = False  # pixels not square (DV/DVD 16:11, HDV 4:3): shown wider than stored


# AVColorTransferCharacteristic values of HDR video (libavutil/pixfmt.h)
HDR_TRANSFERS = {16: "smpte2084", 18: "arib-std-b67"}
INTERLACED_FIELD_ORDERS = {2, 3, 4, 5}  # AVFieldOrder: TT, BB, TB, BT (0 unknown, 1 progressive)


@dataclass(frozen=True)
class Probe:
    demuxer: str  # for `ffmpeg -f`: decided once here, never re-guessed by ffmpeg
    duration: float  # seconds
    bitrate: int | None
    bytes: int
    video: StreamFacts | None  # first real picture stream (cover art excluded)
    audio: StreamFacts | None

    @property
    def media(self) -> Literal["audio", "video"]:
        return "video" if self.video is not None else "audio"

    def info(self) -> m.MediaInfo:
        return m.MediaInfo(
            format=self.demuxer, width=self.video.width if self.video else None,
            height=self.video.height if self.video else None, duration=round(self.duration, 3), bytes=self.bytes,
            video_codec=self.video.codec if self.video else None, audio_codec=self.audio.codec if self.audio else None,
            bitrate=self.bitrate, fps=self.video.fps if self.video else None,
        )


def refuse_playlists(head: bytes) -> None:
    """Playlists and descriptors point elsewhere (URLs, other files): never an input."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for marker in _PLAYLIST_MARKERS:
        if text.startswith(marker):
            raise Reject(f"playlists and stream descriptors are not accepted as input "
                         f"(starts with {marker.decode()!r})")
    # A podcast's MP3/FLAC/Ogg starts with its tags, show notes and links included (4 KB of text
    # with URLs): a file that starts like media (shared/sniff.py) is left to the demuxer allow-list.
    if b"://" in head[:PROBE_BYTES] and sniff(head) is None and _mostly_text(head):
        raise Reject("a text file with URLs in it is not accepted as media input")


def _mostly_text(data: bytes) -> bool:
    if not data:
        return False
    printable = sum(1 for b in data if b in b"\t\r\n" or 32 <= b < 127)
    return printable / len(data) > 0.95


def probe(path: str, size: int | None = None, *, reader: RawIOBase | None = None) -> Probe:
    """Facts about a local file; `Reject` when it is not media we accept. Synchronous: run it
    in the CPU pool. `reader`: read the file's bytes through it instead of opening `path` (a
    source that is still being downloaded: work.Arriving); the same checks and options apply."""
    if reader is None:
        with open(path, "rb") as f:
            head = f.read(PROBE_BYTES)
    else:
        head = reader.read(PROBE_BYTES)
        reader.seek(0)
    refuse_playlists(head)
    # threads=1: libavformat opens decoders to read stream parameters; frame threading would start
    # a thread per core for the few frames it decodes (measured: ~2x the wall time of a 720p probe).
    options = {"protocol_whitelist": "file", "format_whitelist": ",".join(_all_accepted()), "threads": "1"}
    try:
        container = av.open(reader if reader is not None else path, "r", options=options)
    except av.error.FFmpegError as exc:
        raise Reject(f"not a readable audio/video file in an accepted container ({HUMAN_FORMATS}): "
                     f"{exc.strerror}") from None
    try:
        return _facts(container, size)
    except av.error.FFmpegError as exc:
        raise Reject(f"damaged media file: {exc.strerror}") from None
    finally:
        container.close()


def _all_accepted() -> list[str]:
    names: list[str] = []
    for demuxer in ACCEPTED_DEMUXERS:
        names.extend(_ACCEPTED_FAMILIES.get(demuxer, (demuxer,)))
    return names


def _facts(container: av.container.InputContainer, size: int | None) -> Probe:
    family = container.format.name.split(",")
    demuxer = next((name for name in ACCEPTED_DEMUXERS if name in family), None)
    if demuxer is None:
        raise Reject(f"container format {container.format.name!r} is not accepted ({HUMAN_FORMATS})")
    video = audio = None
    end = (container.start_time or 0) / av.time_base + container.duration / av.time_base if container.duration else None
    for stream in container.streams:
        if isinstance(stream, VideoStream) and video is None and not stream.disposition & Disposition.attached_pic:
            vcc = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate
            video = StreamFacts(index=stream.index, codec=vcc.codec.canonical_name, width=vcc.width or None,
                                height=vcc.height or None, fps=round(float(rate), 3) if rate else None,
                                duration=_seconds(stream, end), hdr=int(vcc.color_trc or 0) in HDR_TRANSFERS,
                                interlaced=int(vcc.field_order or 0) in INTERLACED_FIELD_ORDERS,
                                anamorphic=any(sar and sar != 1 for sar in (stream.sample_aspect_ratio,
                                                                            vcc.sample_aspect_ratio)))
        elif isinstance(stream, AudioStream) and audio is None:
            acc = stream.codec_context
            audio = StreamFacts(index=stream.index, codec=acc.codec.canonical_name,
                                sample_rate=acc.sample_rate or None, channels=acc.channels or None,
                                duration=_seconds(stream, end))
    if video is None and audio is None:
        raise Reject("the file has no audio or video stream")
    duration = container.duration / av.time_base if container.duration else None
    if not duration:
        duration = max((s.duration for s in (video, audio) if s and s.duration), default=None)
    if not duration:
        duration = _demux_duration(container)
    if not duration or duration <= 0:
        raise Reject("cannot tell the media's duration (no timestamps): damaged or not a media file")
    bitrate = container.bit_rate or None
    if bitrate is None and size:
        bitrate = int(size * 8 / duration)
    return Probe(demuxer=demuxer, duration=duration, bitrate=bitrate, bytes=size or 0, video=video, audio=audio)


def _seconds(stream: av.stream.Stream, end: float | None) -> float | None:
    """The stream's own length. Without one (WebM and MKV keep none per stream), the most it can
    span: from its first timestamp to the container's `end`; sound that starts 2 s into a video
    is 2 s shorter than the video, not damaged (check_output compares outputs with this)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if end is not None and stream.start_time is not None and stream.time_base:
        return max(0.0, end - float(stream.start_time * stream.time_base))
    return None


def _demux_duration(container: av.container.InputContainer) -> float | None:
    """Last packet end, for containers without a duration header (raw ADTS, some MKV):
    packets only, nothing decoded."""
    end = None
    packets = 0
    for packet in container.demux():
        packets += packet.size > 0
        if packet.pts is None or packet.time_base is None:
            continue
        stop = (packet.pts + (packet.duration or 0)) * Fraction(packet.time_base)
        end = stop if end is None or stop > end else end
    if not packets:  # a header and nothing after it: a recording stopped before its first sample
        raise Reject("the file is empty: its header names audio/video streams but no data follows")
    return float(end) if end is not None else None


def check_limits(facts: Probe, settings: Settings) -> None:
    """Permanent, specific reasons for media we will not spend an encode on."""
    if facts.duration > settings.transcode_max_duration:
        raise Reject(f"media is {facts.duration:.1f} s long, over the limit of {settings.transcode_max_duration:.0f} s")
    if facts.video is not None:
        width, height = facts.video.width or 0, facts.video.height or 0
        if max(width, height) > settings.transcode_max_dimension:
            raise Reject(f"video is {width}x{height}, over the limit of {settings.transcode_max_dimension} px a side")
    if facts.bytes > settings.max_source_bytes:
        raise Reject(f"source is {facts.bytes} bytes, over the limit of {settings.max_source_bytes}")
