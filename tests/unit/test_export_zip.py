"""The ZIP methods finalize picks, checked by three unzip implementations: Zip32 for small
archives, Zip64 exactly where a member or an offset passes 4 GiB (a generator source, not S3,
so a 4 GiB member costs no disk or upload); the archive's size bound and its upload part size."""

from __future__ import annotations

import os
import stat
import subprocess
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from stream_zip import ZIP_AUTO, async_stream_zip, stream_zip
from zlib_ng import zlib_ng

from services.finalize.export import READ_CHUNK, StoredAuto, choose_method
from shared.exportplan import MAX_UPLOAD_PARTS, archive_bound, upload_part_size
from tests.helpers import zip_tools_accept

WHEN = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
MODE = stat.S_IFREG | 0o644


async def chunks_of(data: bytes | Iterator[bytes]) -> AsyncIterator[bytes]:
    for piece in [data] if isinstance(data, bytes) else data:
        yield piece


Member = tuple[str, int, int | None, bytes | Iterator[bytes], bytes]


async def write_zip(path: Path, members: list[Member]) -> list[str]:
    """members: (name, size, crc32 or None, bytes or a generator, first bytes for the probe)."""
    labels: list[str] = []

    async def files() -> AsyncIterator[tuple]:  # type: ignore[type-arg]
        for name, size, crc, data, first in members:
            method, label = choose_method("auto", size, crc, first, 1)
            labels.append(label)
            yield name, WHEN, MODE, method, chunks_of(data)

    with open(path, "wb") as out:
        async for piece in async_stream_zip(files(), chunk_size=READ_CHUNK):
            out.write(piece)
    return labels


def small_members() -> list[Member]:
    photo_like = os.urandom(300_000)
    text = b"hello zip " * 5000
    blob = os.urandom(70_000)
    return [
        ("photo.jpg", len(photo_like), zlib.crc32(photo_like), photo_like, photo_like[:65536]),
        ("notes.txt", len(text), zlib.crc32(text), text, text[:65536]),
        ("blob-without-crc.bin", len(blob), None, blob, blob[:65536]),
        ("empty.txt", 0, 0, b"", b""),
    ]


async def test_small_archive_is_zip32_and_every_tool_accepts_it(tmp_path: Path) -> None:
    path = tmp_path / "small.zip"
    members = small_members()
    labels = await write_zip(path, members)
    assert labels == ["stored", "deflated", "stored-blocks", "stored"]
    zip_tools_accept(str(path))
    data = path.read_bytes()
    assert b"PK\x06\x06" not in data and b"PK\x06\x07" not in data  # no Zip64 records
    with zipfile.ZipFile(path) as archive:
        for name, _size, _crc, content, _first in members:
            assert archive.read(name) == content
        assert archive.getinfo("photo.jpg").compress_type == zipfile.ZIP_STORED
        assert archive.getinfo("notes.txt").compress_size < small_members()[1][1] // 10


@pytest.mark.slow
async def test_member_and_archive_over_4_gib_use_zip64_and_verify(tmp_path: Path) -> None:
    block = os.urandom(READ_CHUNK)
    blocks = 4097  # 4097 MiB > 4 GiB - 1: the member itself needs Zip64
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    size = blocks * len(block)
    big = ("huge.bin", size, crc, (block for _ in range(blocks)), block)
    path = tmp_path / "huge.zip"
    labels = await write_zip(path, [big, *small_members()])  # the small ones sit past the 4 GiB offset
    assert labels[0] == "stored"
    assert path.stat().st_size > size
    zip_tools_accept(str(path))
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("huge.bin")
        assert (info.file_size, info.CRC, info.compress_type) == (size, crc, zipfile.ZIP_STORED)
        assert archive.getinfo("notes.txt").header_offset > 0xFFFFFFFF
        for name, _size, _crc, content, _first in small_members()[1:2]:
            assert archive.read(name) == content
    path.unlink()


async def test_archive_bound_holds_and_parts_stay_within_s3s_limit(tmp_path: Path) -> None:
    path = tmp_path / "bound.zip"
    members = small_members()
    await write_zip(path, members)
    names = sum(len(name.encode()) for name, *_ in members)
    bound = archive_bound([size for _name, size, *_ in members], names)
    assert path.stat().st_size <= bound
    noise = os.urandom(300_000)  # incompressible input judged compressible: deflate may grow it
    await write_zip(path, [("noise.txt", len(noise), zlib.crc32(noise), noise, b"a" * 1000)])
    assert path.stat().st_size <= archive_bound([len(noise)], len("noise.txt"))

    mib = 1024 * 1024
    assert upload_part_size(archive_bound([16 * mib] * 30)) == 8 * mib  # 0.5 GB
    assert upload_part_size(4_000_000_000) == 8 * mib  # the default split size
    for size in (8 * mib * 9_900, 10**11, 5 * 10**12, 48 * 1024**4):
        part = upload_part_size(size)
        assert part % mib == 0 and part >= 8 * mib
        assert -(-size // part) <= MAX_UPLOAD_PARTS, size
    assert upload_part_size(10**11) < 11 * mib  # no bigger than it needs to be: memory is parts in flight


async def test_a_stored_member_whose_bytes_do_not_match_its_crc_fails_the_archive(tmp_path: Path) -> None:
    """The one CRC-32 check of a stored member (S3's CRC, verified by stream-zip on zlib-ng's
    crc32) still catches a single flipped bit, and a JSON member still deflates well."""
    from stream_zip import CRC32IntegrityError

    data = os.urandom(200_000)
    bad = bytearray(data)
    bad[123_456] ^= 0x01
    with pytest.raises(CRC32IntegrityError):
        await write_zip(tmp_path / "bad.zip", [("photo.jpg", len(data), zlib.crc32(data), bytes(bad), data[:65536])])
    text = b'{"id": 1, "name": "a json record", "tags": ["x", "y"]}\n' * 4000
    path = tmp_path / "good.zip"
    assert await write_zip(path, [("rows.json", len(text), zlib.crc32(text), text, text[:65536])]) == ["deflated"]
    with zipfile.ZipFile(path) as archive:
        assert archive.read("rows.json") == text
        assert archive.getinfo("rows.json").compress_size < len(text) // 20


def write_sync(path: Path, members: Iterator[tuple[str, int, int, Iterator[bytes]]]) -> None:
    """README (deflated, as finalize writes it) then stored members with a known CRC-32, through
    stream-zip itself (no thread, no S3): the cheapest way to many members or a 4 GiB offset.
    Runs of zero bytes are skipped in the file, left sparse: 4 GiB of them cost no disk."""
    def files() -> Iterator[tuple]:  # type: ignore[type-arg]
        yield "README.txt", WHEN, MODE, ZIP_AUTO(6, level=2), iter((b"readme",))
        for name, size, crc, pieces in members:
            yield name, WHEN, MODE, StoredAuto(size, crc), pieces

    with open(path, "wb") as out:
        for block in stream_zip(files(), chunk_size=READ_CHUNK):
            if block.count(0) == len(block):
                out.seek(len(block), os.SEEK_CUR)
            else:
                out.write(block)
        out.truncate()


def test_65536_stored_members_get_zip64_end_records(tmp_path: Path) -> None:
    """70,000 thumbnails (stored, with S3's CRC) are more entries than Zip32's end record counts:
    the central directory turns Zip64 as it does for deflated members (it raised an overflow)."""
    path = tmp_path / "many.zip"
    write_sync(path, ((f"t/{i}.jpg", 0, 0, iter((b"",))) for i in range(65_536)))
    zip_tools_accept(str(path))
    with zipfile.ZipFile(path) as archive:
        assert len(archive.infolist()) == 65_537
    assert b"PK\x06\x06" in path.read_bytes()[-200:]


def test_a_stored_zip32_member_ending_past_4_gib_gets_zip64_end_records(tmp_path: Path) -> None:
    """A part bigger than 4 GiB (JETMEDIA_EXPORT_PART_BYTES raised) whose member starts below
    4 GiB, Zip32, and ends above: the central directory's offset needs Zip64 (it raised)."""
    block = bytes(READ_CHUNK)
    size = 0xFFFFFFFF - 50  # with README and its header before it, it ends past 4 GiB
    crc = 0
    for _ in range(size // READ_CHUNK):
        crc = zlib_ng.crc32(block, crc)
    tail = block[:size % READ_CHUNK]
    crc = zlib_ng.crc32(tail, crc)
    pieces = iter([*(block for _ in range(size // READ_CHUNK)), tail])
    path = tmp_path / "offset.zip"
    write_sync(path, iter([("big.bin", size, crc, pieces), ("after.txt", 5, zlib.crc32(b"after"),
                                                                iter((b"after",)))]))
    with zipfile.ZipFile(path) as archive:  # the file is sparse: only its ends are read here
        info = archive.getinfo("big.bin")
        assert (info.file_size, info.compress_type) == (size, zipfile.ZIP_STORED)
        assert archive.getinfo("after.txt").header_offset > 0xFFFFFFFF
        assert archive.read("after.txt") == b"after"
        assert archive.read("README.txt") == b"readme"
    for command in (["unzip", "-l", str(path)], ["bsdtar", "-tf", str(path)]):  # the central directory only
        listed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
        assert "big.bin" in listed and "after.txt" in listed
    path.unlink()


def test_a_members_date_is_its_sources_within_what_a_zip_can_say() -> None:
    from datetime import UTC, datetime

    from services.finalize.export import file_date

    export = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert file_date(None, export) == export  # S3 gave none
    assert file_date(datetime(2024, 5, 1, 12, 0, tzinfo=UTC), export) == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert file_date(datetime(1970, 1, 1, tzinfo=UTC), export) == datetime(1980, 1, 1, tzinfo=UTC)
    assert file_date(datetime(2200, 1, 1, tzinfo=UTC), export).year == 2107
