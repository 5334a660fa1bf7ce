"""What a file is, from its first bytes: never from the producer's content-type or extension.

Only a decision of which stage gets the file; the stage itself then decodes (libvips, ffmpeg)
and rejects what does not decode.
"""

from __future__ import annotations

from dataclasses import dataclass

SNIFF_BYTES = 64


@dataclass(frozen=True)
class Sniffed:
    media: str  # image | audio | video
    format: str  # jpeg, png, mp4, ...


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"avif", b"avis"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}


def sniff(head: bytes) -> Sniffed | None:
    """Classify by magic numbers; None when nothing we handle starts like this."""
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image", "gif")
    if head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*"):
        return Sniffed("image", "tiff")
    if head.startswith(b"RIFF") and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return Sniffed("image", "webp")
        if form == b"WAVE":
            return Sniffed("audio", "wav")
        if form == b"AVI ":
            return Sniffed("video", "avi")
        return None
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return Sniffed("image", "avif" if brand in (b"avif", b"avis") else "heif")
        if brand in _AUDIO_BRANDS:
            return Sniffed("audio", "m4a")
        return Sniffed("video", "mov" if brand == b"qt  " else "mp4")
    if head.startswith(b"fLaC"):
        return Sniffed("audio", "flac")
    if head.startswith(b"OggS"):
        return Sniffed("audio", "ogg")  # Theora video in Ogg is rare; transcode probes anyway
    if head.startswith(b"ID3"):
        return Sniffed("audio", "mp3")
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xF6) == 0xF0:
        return Sniffed("audio", "aac")  # ADTS
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) != 0:
        return Sniffed("audio", "mp3")  # MPEG audio frame sync, layer bits set
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", "webm" if b"webm" in head[:64] else "mkv")
    return None
