"""What a file is, from its first bytes: never from the producer's content-type or extension.

Only a decision of which stage gets the file; the stage itself then decodes (libvips, ffmpeg)
and rejects what does not decode. What is not accepted is named (`found`) so a person reads
"an SVG (XML) image", not hex; the first bytes follow at the end, for whoever debugs the letter.
"""

from __future__ import annotations

from dataclasses import dataclass

SNIFF_BYTES = 256  # `sniff` looks at the first 64; `found` further (an XML prolog before <svg>)


@dataclass(frozen=True)
class Sniffed:
    media: str  # image | audio | video
    format: str  # jpeg, png, mp4, ...


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"avif", b"avis"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_W64 = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"  # Sony Wave64's RIFF GUID
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}  # first atoms of a MOV without `ftyp`
_TS_SYNC = 0x47  # MPEG-TS: every 188-byte packet starts with it (M2TS/AVCHD: 192, after a 4-byte timecode)


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
        if brand == b"crx ":
            return None  # a Canon RAW (CR3) photo in an MP4-like box structure: not a video
        return Sniffed("video", "mov" if brand == b"qt  " else "mp4")
    if head[:4] in (b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return Sniffed("audio", "wav")  # WAV past 4 GB: field recorders, broadcast (EBU)
    if head.startswith(_W64):
        return Sniffed("audio", "w64")
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return Sniffed("audio", "aiff")  # Logic, GarageBand, Pro Tools exports
    if _transport_stream(head):
        return Sniffed("video", "mpegts")  # broadcast captures, AVCHD camcorders (.MTS); the probe decides
    if (len(head) >= 8 and head[4:8] in _QUICKTIME_ATOMS and _atom_size_ok(int.from_bytes(head[:4], "big"))
            and not _is_text(head)):  # "The free software..." is text
        return Sniffed("video", "mov")  # QuickTime before `ftyp` (older cameras and Macs): the probe decides
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


def _atom_size_ok(size: int) -> bool:
    """A QuickTime atom's size: 0 (to the end), 1 (64-bit size follows) or at least its 8-byte header."""
    return size in (0, 1) or size >= 8


def _transport_stream(head: bytes) -> bool:
    """Two packets' sync bytes where 188-byte TS (or 192-byte M2TS) packets would put them, in
    binary data (a text file that starts with "G" can have another at byte 188)."""
    return any(len(head) > at + stride and head[at] == head[at + stride] == _TS_SYNC
               for at, stride in ((0, 188), (4, 192))) and not _is_text(head)


ACCEPTED = ("JPEG, PNG, WebP, GIF, TIFF, HEIF, AVIF images; MP3, AAC, M4A, FLAC, Ogg, WAV, AIFF audio; "
            "MP4, MOV, WebM, MKV, AVI, MPEG-TS video")

# (prefix, what it is), checked in order on the raw bytes
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or a ZIP-based document: DOCX, XLSX, EPUB, ...)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x7fELF", "a Linux executable (ELF)"),
    (b"MZ", "a Windows executable"),
    (b"8BPS", "a Photoshop (PSD) image"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
    (b"\x00\x00\x01\xba", "an MPEG program stream (VOB/MPG) video"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office document (DOC/XLS/PPT)"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "a Windows Media (ASF: WMA/WMV) file"),
    (b"caff", "a Core Audio (CAF) file"),
    (b"#!AMR", "an AMR voice recording"),
    (b"\x00\x00\x00\x18ftypcrx ", "a Canon RAW (CR3) photo"),
    (b"FUJIFILMCCD-RAW", "a Fujifilm RAW (RAF) photo"),
    (b"IIRO", "an Olympus RAW (ORF) photo"),
    (b"IIU\x00", "a Panasonic RAW (RW2) photo"),
)


def found(head: bytes) -> str:
    """What the first bytes look like, in words ("an SVG (XML) image", "an HTML page", "plain
    text", ...), for rejections of files `sniff` does not accept."""
    if not head:
        return "empty"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head.startswith(b"BM") and head[6:10] == b"\0\0\0\0":
        return "a BMP image"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith(b"#extm3u"):
        return "an HLS playlist (M3U8)" if b"#ext-x-" in text else "an M3U playlist"
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<svg" in text):
        return "an SVG (XML) image"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if text.startswith(b"<?xml"):
        return "an XML document"
    if text.startswith((b"{", b"[")) and _is_text(head):
        return "JSON or other text"
    if _is_text(head):
        return "plain text"
    return "binary data of an unknown type"


def rejection(head: bytes, where: str) -> str:
    """The reason a file is refused: what it is, what is accepted, then its first bytes."""
    return (f"unsupported file type: {where} is {found(head)}, which is not accepted; accepted: {ACCEPTED} "
            f"(first bytes: {head[:16].hex(' ')})")


def _is_text(head: bytes) -> bool:
    """UTF-8 without control characters besides whitespace (a multi-byte character cut off at
    the end of the sample is fine)."""
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        decoded = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n\f" for c in decoded)
