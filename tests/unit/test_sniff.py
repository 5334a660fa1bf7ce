from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services import samples
from shared.sniff import sniff


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
])
def test_magic_numbers(head: bytes, media: str, fmt: str) -> None:
    found = sniff(head)
    assert found is not None and (found.media, found.format) == (media, fmt)


def test_real_files() -> None:
    assert sniff(samples.photo(64, 64)[:64]).format == "jpeg"  # type: ignore[union-attr]
    assert sniff(samples.png_with_alpha(32, 32)[:64]).format == "png"  # type: ignore[union-attr]


@pytest.mark.parametrize("head", [b"", b"hello world", b"%PDF-1.7\n", b"PK\x03\x04", b"<svg xmlns="])
def test_unknown_is_none(head: bytes) -> None:
    assert sniff(head) is None


@given(st.binary(max_size=64))
def test_never_raises_on_any_bytes(head: bytes) -> None:
    result = sniff(head)
    assert result is None or result.media in ("image", "audio", "video")
