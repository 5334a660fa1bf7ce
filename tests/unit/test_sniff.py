from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services import samples
from services.transcode.samples import lavfi
from shared.sniff import found, rejection, sniff


@pytest.mark.parametrize("head, media, fmt", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image", "jpeg"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "image", "png"),
    (b"GIF89a\x01\x00", "image", "gif"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image", "webp"),
    (b"II*\x00\x08\x00\x00\x00", "image", "tiff"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "image", "avif"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image", "heif"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio", "wav"),
    (b"fLaC\x00\x00\x00\x22", "audio", "flac"),
    (b"OggS\x00\x02\x00\x00", "audio", "ogg"),
    (b"ID3\x04\x00\x00\x00", "audio", "mp3"),
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "audio", "m4a"),
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video", "mp4"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "video", "mov"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm", "video", "webm"),
    (b"RF64\xff\xff\xff\xffWAVEds64", "audio", "wav"),
    (b"BW64\xff\xff\xff\xffWAVEds64", "audio", "wav"),
    (b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00", "audio", "w64"),
    (b"FORM\x00\x01\x58\xb6AIFFCOMM", "audio", "aiff"),
    (b"FORM\x00\x01\x58\xb6AIFCFVER", "audio", "aiff"),
    (b"\x47\x40\x11\x10" + bytes(184) + b"\x47\x40\x00\x10", "video", "mpegts"),
    (b"\x0e\xbf\x46\x22\x47\x40\x11\x10" + bytes(188) + b"\x47\x40\x00\x10", "video", "mpegts"),
    (b"\x00\x00\x00\x08wide\x00\x0c\x8e\x5amdat", "video", "mov"),  # QuickTime without `ftyp`
    (b"\x00\x00\x04\x2amoov\x00\x00\x00\x6cmvhd", "video", "mov"),
])
def test_magic_numbers(head: bytes, media: str, fmt: str) -> None:
    found = sniff(head)
    assert found is not None and (found.media, found.format) == (media, fmt)


def test_real_files() -> None:
    assert sniff(samples.photo(64, 64)[:64]).format == "jpeg"  # type: ignore[union-attr]
    assert sniff(samples.png_with_alpha(32, 32)[:64]).format == "png"  # type: ignore[union-attr]


def test_real_media_files_that_do_not_start_with_a_famous_magic_number() -> None:
    """Camcorders' M2TS, AIFF exports and QuickTime files older than `ftyp` were refused at upload."""
    mov = lavfi("mov", 0.2)
    without_ftyp = mov[int.from_bytes(mov[:4], "big"):]
    assert without_ftyp[4:8] == b"wide"
    for data, fmt in ((lavfi("mts", 0.2), "mpegts"), (lavfi("aiff", 0.2), "aiff"), (without_ftyp, "mov")):
        assert sniff(data[:256]).format == fmt  # type: ignore[union-attr]


@pytest.mark.parametrize("head", [b"", b"hello world", b"%PDF-1.7\n", b"PK\x03\x04", b"<svg xmlns="])
def test_unknown_is_none(head: bytes) -> None:
    assert sniff(head) is None


@given(st.binary(max_size=64))
def test_never_raises_on_any_bytes(head: bytes) -> None:
    result = sniff(head)
    assert result is None or result.media in ("image", "audio", "video")


@pytest.mark.parametrize("head, words", [
    (b'<svg xmlns="http://www.w3.org/2000/svg" height="10"', "an SVG (XML) image"),
    (b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- made by hand -->\n<svg width="1">', "an SVG (XML) image"),
    (b"\xef\xbb\xbf  <!DOCTYPE html>\n<html lang=en>", "an HTML page"),
    (b"<?xml version='1.0'?><feed>", "an XML document"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "a PDF document"),
    (b"PK\x03\x04\x14\x00\x06\x00", "a ZIP archive"),
    (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6", "an HLS playlist"),
    (b"this is a text file pretending to be a JPEG\n", "plain text"),
    (b'{"key": "value"}', "JSON or other text"),
    (b"BM\x36\x00\x0c\x00\x00\x00\x00\x00\x36\x00", "a BMP image"),
    (b"BMW cars are not bitmaps", "plain text"),
    (b"\x00\x01\x02\x03\xfe\xfd", "binary data of an unknown type"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa", "a Windows Media (ASF: WMA/WMV) file"),
    (b"caff\x00\x01\x00\x00desc", "a Core Audio (CAF) file"),
    (b"#!AMR\n<$\x03", "an AMR voice recording"),
    (b"\x47\x40\x11\x10" + bytes(100), "binary data of an unknown type"),  # one TS sync byte is not enough
    (b"Good morning" + b" and more text" * 12 + b"G" * 40, "plain text"),  # "G" at 0 and 188: text, not TS
    (b"The free software foundation\n", "plain text"),  # "free" at 4: text, not a QuickTime atom
    (b"", "empty"),
])
def test_found_names_what_it_is(head: bytes, words: str) -> None:
    assert sniff(head) is None
    assert found(head).startswith(words)


def test_rejection_reads_as_words_first_and_keeps_hex_last() -> None:
    reason = rejection(b'<svg height="10" width="10">', "s3://b/pic.jpg")
    assert reason.startswith("unsupported file type: s3://b/pic.jpg is an SVG (XML) image, which is not accepted;")
    assert "accepted: JPEG, PNG, WebP, GIF, TIFF, HEIF, AVIF images;" in reason and "video" in reason
    assert reason.endswith("(first bytes: 3c 73 76 67 20 68 65 69 67 68 74 3d 22 31 30 22)")


@given(st.binary(max_size=300))
def test_found_never_raises(head: bytes) -> None:
    assert found(head)


def test_a_canon_cr3_is_a_photo_not_a_video() -> None:
    head = b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom"
    assert sniff(head) is None and found(head) == "a Canon RAW (CR3) photo"
