"""The export's pipelined I/O on the real S3: several multipart parts in flight (and nothing left
open when a part fails or the upload is aborted mid-flight), sources read ahead within their
byte budget and in order, and the ZIP writer thread's errors reaching the loop."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import threading
import zipfile
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from stream_zip import ZIP_AUTO, ZipIntegrityError

from services.finalize.export import choose_method
from services.finalize.readahead import ReadAhead
from services.finalize.zipthread import Built, Streamed, ZipThread
from shared.config import Settings
from shared.fasts3 import FastS3
from shared.storage import PartBody, Storage, is_missing
from tests.helpers import zip_tools_accept

MIB = 1024 * 1024
WHEN = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
MODE = stat.S_IFREG | 0o644


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    async with Storage(settings.replace(bucket="jetmedia-io-test")) as opened:
        await opened.ensure_bucket()
        yield opened
        for key, upload_id in await opened.open_multipart_uploads():
            await opened.client.abort_multipart_upload(Bucket=opened.bucket, Key=key, UploadId=upload_id)
        for key in await opened.list_keys(""):
            await opened.delete(key)


def calls_of(client: Any, method: str, pick: str) -> list[Any]:
    """The `pick` argument of every call of `client.method`, recorded as each call goes to S3."""
    seen: list[Any] = []
    real = getattr(client, method)

    async def call(**kwargs: Any) -> Any:
        seen.append(kwargs[pick])
        return await real(**kwargs)

    setattr(client, method, call)
    return seen


class PartsInFlight:
    """Counts concurrent UploadPart calls on the real client (each still goes to S3)."""

    def __init__(self, storage: Storage, delay: float = 0.0) -> None:
        self.now = self.most = self.calls = 0
        self.delay = delay
        self.real = storage.client.upload_part
        storage.client.upload_part = self.upload_part

    async def upload_part(self, **kwargs: Any) -> Any:
        self.now += 1
        self.calls += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.delay)  # a slower link: parts overlap as they would on one
            return await self.real(**kwargs)
        finally:
            self.now -= 1


async def test_the_fast_head_reads_what_botocore_reads(storage: Storage) -> None:
    """The chunk stage's HEAD of a source (shared/fasts3.py): size, whole-object CRC-32 and ETag
    as `Storage.head` has them; no CRC for a multipart object (S3's is a CRC of CRCs, "-N");
    a missing key is left to botocore (None), which says "missing"."""
    await storage.put_bytes("io/head/one.bin", b"x" * 100_001)
    upload = storage.multipart("io/head/parts.bin", part_size=5 * MIB)
    await upload.write(os.urandom(6 * MIB))
    await upload.complete()
    fast = FastS3(storage.settings)
    try:
        assert fast.usable
        for key in ("io/head/one.bin", "io/head/parts.bin", "io/head/ünï cödé?.bin"):
            if key.endswith("?.bin"):
                await storage.put_bytes(key, b"odd name")
            slow = await storage.head(key)
            assert slow is not None
            assert await fast.head(storage.bucket, key) == (slow.size, slow.crc32, slow.etag, slow.modified)
        one = await fast.head(storage.bucket, "io/head/one.bin")
        assert one is not None and one[1] == zlib.crc32(b"x" * 100_001)
        assert await fast.head(storage.bucket, "io/head/nothing.bin") is None
        assert await storage.head("io/head/nothing.bin") is None
    finally:
        await fast.close()


@pytest.mark.parametrize("signed", ["right", "wrong"])
async def test_fast_gets_and_parts_move_the_same_bytes(storage: Storage, signed: str) -> None:
    """The export's source GETs and parts on the hand-signed path (shared/fasts3.py) carry the
    same bytes in the same pieces as botocore; with a wrong key there (S3 refuses it) botocore
    does every request again and the result is the same; a missing source raises botocore's
    "missing" either way."""
    data = os.urandom(13 * MIB + 5)
    await storage.put_bytes("io/fast/src.bin", data)
    secret = storage.settings.s3_secret_key if signed == "right" else "not-the-key"
    fast = FastS3(storage.settings.replace(s3_secret_key=secret))
    parts = PartsInFlight(storage)
    gets = calls_of(storage.client, "get_object", "Key")
    try:
        pieces = [piece async for piece in storage.iter_bytes("io/fast/src.bin", chunk=MIB, fast=fast)]
        assert b"".join(pieces) == data and {len(piece) for piece in pieces[:-1]} == {MIB}
        upload = storage.multipart("io/fast/out.bin", part_size=5 * MIB, fast=fast)
        for piece in pieces:
            await upload.write(piece)
        await upload.complete()
        with pytest.raises(ClientError) as missing:
            async for _piece in storage.iter_bytes("io/fast/none.bin", fast=fast):
                pass
        assert is_missing(missing.value)
        if signed == "right":
            assert (gets, parts.calls) == (["io/fast/none.bin"], 0)  # botocore only for the 404
        else:
            assert (gets, parts.calls) == (["io/fast/src.bin", "io/fast/none.bin"], 3)
        assert await storage.get_bytes("io/fast/out.bin") == data
    finally:
        await fast.close()


async def test_parts_upload_four_at_a_time_and_assemble_in_order(storage: Storage) -> None:
    data = os.urandom(29 * MIB + 12345)
    spy = PartsInFlight(storage, delay=0.2)
    upload = storage.multipart("io/parts.bin", part_size=5 * MIB)
    pieces = [data[i:i + 700_001] for i in range(0, len(data), 700_001)]  # any piece size
    for piece in pieces:
        await upload.write(piece)
    await upload.complete()
    assert (spy.calls, spy.most) == (6, 4)  # five whole parts and the rest; four in flight at most
    assert await storage.get_bytes("io/parts.bin") == data
    assert await storage.open_multipart_uploads("io/") == []


async def test_parts_are_sent_from_the_written_pieces(storage: Storage) -> None:
    data = os.urandom(16 * MIB + 7)
    bodies: list[PartBody] = calls_of(storage.client, "upload_part", "Body")
    upload = storage.multipart("io/pieces.bin", part_size=5 * MIB, queue=1)
    # big pieces are held as they are, small ones gathered, a mutable buffer copied (it may be
    # reused by the caller), a piece bigger than a part cut at the part's end
    sizes = [MIB, 100, 70_000, MIB - 70_100, 6 * MIB, 300_000, 2 * MIB, len(data)]
    offset = 0
    for size in sizes:
        piece = data[offset:offset + size]
        if size == 300_000:
            buffer = bytearray(piece)
            await upload.write(buffer)
            buffer[:] = bytes(len(buffer))
        else:
            await upload.write(piece)
        offset += len(piece)
    await upload.complete()
    assert await storage.get_bytes("io/pieces.bin") == data
    assert [len(b) for b in bodies] == [5 * MIB, 5 * MIB, 5 * MIB, MIB + 7]
    # what botocore does with a body: reads it for the payload hash, seeks back, reads it again
    body = bodies[1]
    body.seek(0)
    first = b"".join(bytes(piece) for piece in iter(lambda: body.read(MIB), b""))
    assert body.seek(0) == 0 and body.read() == first == data[5 * MIB:10 * MIB]
    assert body.seek(3 * MIB + 5) == 3 * MIB + 5 and bytes(body.read(10)) == data[8 * MIB + 5:8 * MIB + 15]


async def test_a_failed_part_fails_the_upload_and_abort_leaves_nothing(storage: Storage) -> None:
    upload = storage.multipart("io/failing.bin", part_size=5 * MIB)
    await upload.write(os.urandom(6 * MIB))  # starts the upload and its first part
    assert upload.upload_id is not None
    # the upload vanishes under us (another worker aborted it): every later part fails
    await storage.client.abort_multipart_upload(Bucket=storage.bucket, Key=upload.key, UploadId=upload.upload_id)
    with pytest.raises(ClientError):
        for _ in range(8):
            await upload.write(os.urandom(5 * MIB))
        await upload.complete()
    await upload.abort()
    assert await storage.open_multipart_uploads("io/") == []
    assert await storage.list_keys("io/") == []


async def test_abort_with_parts_in_flight_leaves_no_open_upload(storage: Storage) -> None:
    spy = PartsInFlight(storage, delay=1.0)
    upload = storage.multipart("io/aborted.bin", part_size=5 * MIB)
    for _ in range(4):
        await upload.write(os.urandom(5 * MIB))
    await asyncio.sleep(0)  # the part tasks start
    assert spy.now == 4  # all four still uploading
    await upload.abort()
    assert spy.now == 0
    assert await storage.open_multipart_uploads("io/") == []
    assert await storage.list_keys("io/") == []


async def test_read_ahead_keeps_order_and_budget_and_hands_over_errors(storage: Storage) -> None:
    sizes = [3 * MIB + 17, 2 * MIB, 0, 5 * MIB + 3, 1, 4 * MIB, 3 * MIB, 2 * MIB + 9]
    sources = {f"io/src/{i}": os.urandom(size) for i, size in enumerate(sizes)}
    for key, data in sources.items():
        await storage.put_bytes(key, data)
    wanted = [(key, storage.bucket, len(data)) for key, data in sources.items()]
    wanted.insert(3, ("io/src/gone", storage.bucket, 1000))  # deleted since the chunk stage saw it
    budget = 4 * MIB
    most = 0
    async with ReadAhead(storage, wanted, budget=budget, chunk=MIB, max_open=3) as ahead:
        for key, _bucket, _size in wanted:
            stream = ahead.next()
            if key.endswith("gone"):
                with pytest.raises(ClientError):
                    await anext(stream)
                continue
            got = b""
            async for piece in stream:
                got += piece
                await asyncio.sleep(0.05)  # a slow writer: the readers ahead wait for it
                most = max(most, ahead.buffered)
            assert got == sources[key], key
    assert MIB < most <= budget + 4 * MIB  # read ahead, within the budget plus a piece per reader


async def read_all(writer: ZipThread) -> bytes:
    return b"".join([part async for part in writer.parts()])


async def pieces_of(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), MIB):
        yield data[i:i + MIB]


def zip_threads() -> int:
    return sum(t.name == "zip-writer" for t in threading.enumerate())


async def test_zip_thread_writes_what_stream_zip_writes(tmp_path: Path) -> None:
    photo, text = os.urandom(3 * MIB + 5), b"hello zip " * 300_000
    seen: list[int] = []

    async def entries() -> AsyncIterator[Streamed | Built]:
        yield Built("README.txt", WHEN, MODE, lambda: (ZIP_AUTO(5, level=1), b"hello"))
        for name, data in (("photo.jpg", photo), ("notes.txt", text)):
            method, _label = choose_method("auto", len(data), zlib.crc32(data), data[:65536], 1)
            yield Streamed(name, WHEN, MODE, method, pieces_of(data), seen=lambda piece: seen.append(len(piece)))
        yield Built("manifest.json", WHEN, MODE, lambda: (ZIP_AUTO(0, level=1), b""))

    writer = ZipThread(entries(), chunk=MIB)
    parts = [part async for part in writer.parts()]
    assert max(len(part) for part in parts) == MIB
    path = tmp_path / "t.zip"
    path.write_bytes(b"".join(parts))
    zip_tools_accept(str(path))
    with zipfile.ZipFile(path) as archive:
        assert archive.read("photo.jpg") == photo and archive.read("notes.txt") == text
        assert archive.getinfo("photo.jpg").compress_type == zipfile.ZIP_STORED
    assert sum(seen) == len(photo) + len(text)
    assert zip_threads() == 0


async def test_the_zip_thread_hashes_each_part_the_upload_sends(storage: Storage) -> None:
    """Given the upload's part size, the writer thread cuts its output at the parts' ends and
    hashes each part (SigV4's payload hash, taken while the bytes are in cache); the upload sends
    every part hand-signed with that hash, none through botocore, and the hashes are the parts'."""
    photo, text = os.urandom(11 * MIB + 3), b"hello zip " * 200_000
    part = 5 * MIB

    async def entries() -> AsyncIterator[Streamed | Built]:
        yield Built("README.txt", WHEN, MODE, lambda: (ZIP_AUTO(5, level=1), b"hello"))
        for name, data in (("photo.jpg", photo), ("notes.txt", text)):
            method, _label = choose_method("auto", len(data), zlib.crc32(data), data[:65536], 1)
            yield Streamed(name, WHEN, MODE, method, pieces_of(data))

    writer = ZipThread(entries(), chunk=MIB, part_size=part)
    fast = FastS3(storage.settings)
    upload = storage.multipart("io/hashed.zip", part_size=part, fast=fast)
    given: dict[int, str | None] = {}

    def recorded(number: int) -> str | None:
        given[number] = writer.part_sha256(number)
        return given[number]

    upload.part_sha256 = recorded
    botocore = PartsInFlight(storage)
    try:
        async for piece in writer.parts():
            await upload.write(piece)
        await upload.complete()
    finally:
        await fast.close()
    archive = await storage.get_bytes("io/hashed.zip")
    assert given == {n: hashlib.sha256(archive[(n - 1) * part:n * part]).hexdigest() for n in (1, 2, 3)}
    assert len(archive) > 2 * part and botocore.calls == 0
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert opened.read("photo.jpg") == photo and opened.read("notes.txt") == text
    assert zip_threads() == 0


async def test_zip_thread_raises_a_crc_mismatch_and_a_feeder_error_and_stops() -> None:
    data = os.urandom(2 * MIB)

    async def wrong_crc() -> AsyncIterator[Streamed | Built]:
        method, _label = choose_method("store", len(data), zlib.crc32(data) ^ 1, data, 1)
        yield Streamed("changed.bin", WHEN, MODE, method, pieces_of(data), tag="changed")

    writer = ZipThread(wrong_crc(), chunk=MIB)
    with pytest.raises(ZipIntegrityError):
        await read_all(writer)
    assert writer.current == "changed"

    async def failing() -> AsyncIterator[Streamed | Built]:
        method, _label = choose_method("store", len(data), zlib.crc32(data), data, 1)
        yield Streamed("ok.bin", WHEN, MODE, method, pieces_of(data))
        raise RuntimeError("source read failed")

    with pytest.raises(RuntimeError, match="source read failed"):
        await read_all(ZipThread(failing(), chunk=MIB))
    assert zip_threads() == 0

