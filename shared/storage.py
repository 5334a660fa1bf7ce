"""S3 access for every stage: any endpoint (AWS, R2, B2, SeaweedFS — the embedded one —, MinIO).

One aioboto3 client per process, opened with `Storage.open()` and closed on shutdown.
Media never travels on the bus; stages pass keys and stream bytes through here. Uploads carry
a CRC-32 checksum so the export stage can store members without reading them twice.

Everything is signed with SigV4 in the configured region, presigned URLs included: botocore would
otherwise presign SigV2 URLs for us-east-1, which AWS, R2, B2 and SeaweedFS refuse. `check()`
is the start-up probe: endpoint reachable, credentials accepted, bucket there — or one line saying
which of these is wrong (a `ConfigError`, exit 2), rather than a dead letter per message later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import unicodedata
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aioboto3
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from .config import ConfigError, Settings

if TYPE_CHECKING:
    from .fasts3 import FastS3

# bytes: files up to this are read whole to be sent on the fast path. The saving is per request
# (~5 ms of botocore for a 6.6 MB video), while the memory held and the hashing done on the event
# loop (SHA-256 + CRC-32, ~2 ms per MiB) grow with the file: bigger files stream through botocore.
FAST_FILE = 16 * 1024 * 1024
MIN_PART = 8 * 1024 * 1024  # S3's floor is 5 MiB; 8 MiB keeps part counts low for big archives
UPLOAD_QUEUE = 4  # multipart parts in flight at once (lib-storage's default queue size)
SMALL_WRITE = 256 * 1024  # multipart writes below this are gathered into one block
HEADERS_PIECE = 64 * 1024  # the first bytes of a part, sent joined to the request's headers


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str | None
    crc32: int | None  # present when the object was uploaded with a CRC32 checksum (single part)
    etag: str | None = None
    modified: datetime | None = None  # Last-Modified: the file date an export gives the member


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> Storage:
        session = aioboto3.Session()
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=64,
            s3={"addressing_style": "path"},
            signature_version="s3v4",  # also for presigned URLs (botocore's us-east-1 default is SigV2)
            # Only send/verify checksums where we ask for them (MinIO/R2 compatibility).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = await self._stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=self.settings.s3_endpoint,
                region_name=self.settings.s3_region,
                aws_access_key_id=self.settings.s3_access_key,
                aws_secret_access_key=self.settings.s3_secret_key,
                config=config,
            )
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("Storage used outside `async with`")
        return self._client

    @property
    def where(self) -> str:
        """The endpoint, as people configured it (for messages)."""
        return self.settings.s3_endpoint or f"AWS S3 ({self.settings.s3_region})"

    async def check(self, *, create: bool = False, timeout: float = 20.0) -> None:
        """Start-up check: list one key of the bucket with the configured credentials. Raises
        `StorageError` with one line naming the endpoint and what is wrong; `create` makes a
        missing bucket instead (the embedded stack, whose S3 is ours)."""
        try:
            await asyncio.wait_for(self._list_one(create), timeout)
        except TimeoutError:
            raise StorageUnreachable(f"S3 endpoint {self.where} did not answer within {timeout:g} s") from None

    async def _list_one(self, create: bool) -> None:
        config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=10,
                        s3={"addressing_style": "path"}, signature_version="s3v4")
        session = aioboto3.Session()
        async with session.client(
            "s3", endpoint_url=self.settings.s3_endpoint, region_name=self.settings.s3_region,
            aws_access_key_id=self.settings.s3_access_key, aws_secret_access_key=self.settings.s3_secret_key,
            config=config,
        ) as client:
            try:
                try:
                    await client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
                except ClientError as exc:
                    if not (create and _code(exc) == "NoSuchBucket"):
                        raise
                    await client.create_bucket(Bucket=self.bucket)
                    await client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except ClientError as exc:
                raise StorageError(self._explain(exc)) from None
            except (EndpointConnectionError, ConnectTimeoutError) as exc:
                raise StorageUnreachable(f"cannot connect to S3 endpoint {self.where}: {_first_line(exc)}"
                                   " (is the server running? is JETMEDIA_S3_ENDPOINT right?)") from None
            except ReadTimeoutError:
                raise StorageUnreachable(f"S3 endpoint {self.where} accepted the connection but did not answer"
                                         ) from None
            except NoCredentialsError:
                raise StorageError(f"no S3 credentials for {self.where}: set JETMEDIA_S3_ACCESS_KEY and "
                                   "JETMEDIA_S3_SECRET_KEY (or the AWS default chain)") from None
            except BotoCoreError as exc:
                raise StorageError(f"S3 endpoint {self.where}: {_first_line(exc)}") from None

    def _explain(self, exc: ClientError) -> str:
        code, status = _code(exc), _status(exc)
        key = self.settings.s3_access_key or "(default chain)"
        if code == "NoSuchBucket":
            return (f"bucket {self.bucket!r} does not exist at S3 endpoint {self.where}: create it "
                    "(compose: the bucket-init service) or set JETMEDIA_BUCKET")
        if code in ("InvalidAccessKeyId", "InvalidClientTokenId"):
            return f"S3 endpoint {self.where} does not know access key {key!r} ({code}): check JETMEDIA_S3_ACCESS_KEY"
        if code == "SignatureDoesNotMatch":
            return (f"S3 endpoint {self.where} rejected the secret key of access key {key!r} ({code}): "
                    "check JETMEDIA_S3_SECRET_KEY (and JETMEDIA_S3_REGION)")
        if code == "AccessDenied" or status == 403:
            return (f"S3 endpoint {self.where} denied access key {key!r} listing bucket {self.bucket!r} "
                    f"({code or status}): check the credentials and their permissions")
        message = str(exc.response.get("Error", {}).get("Message", "")).splitlines()[:1]
        return f"S3 endpoint {self.where} answered {code or 'HTTP'} {status} for bucket {self.bucket!r}" + (
            f": {message[0]}" if message else "")

    async def ensure_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self.client.create_bucket(Bucket=self.bucket)

    async def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket is there: a HEAD of an object in a missing bucket says only 404,
        which must not read as "this source is missing" (an export of nothing would end ready
        and empty)."""
        try:
            await self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise
        return True

    async def head(self, key: str, bucket: str | None = None) -> ObjectInfo | None:
        try:
            resp = await self.client.head_object(Bucket=bucket or self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        crc = resp.get("ChecksumCRC32")
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            content_type=resp.get("ContentType"),
            crc32=_crc_from_b64(crc) if crc and "-" not in crc else None,
            etag=resp.get("ETag"),
            modified=resp.get("LastModified"),
        )

    async def get_bytes(self, key: str, bucket: str | None = None, *, first: int | None = None) -> bytes:
        """The whole object, or only its `first` bytes (for sniffing)."""
        extra = {"Range": f"bytes=0-{first - 1}"} if first else {}
        resp = await self.client.get_object(Bucket=bucket or self.bucket, Key=key, **extra)
        async with resp["Body"] as body:
            data: bytes = await body.read()
            return data

    async def iter_bytes(self, key: str, bucket: str | None = None, chunk: int = 1024 * 1024, *,
                         fast: FastS3 | None = None) -> AsyncIterator[bytes]:
        """Stream an object without holding it: memory stays at about one chunk. Pieces are
        exactly `chunk` bytes (the last one shorter): the socket hands out whatever has arrived
        (SeaweedFS: 4 KB to 256 KB), so reads ask only for what the piece still lacks and are
        joined once; every piece costs the ZIP writer a hop, and whole pieces pass through
        stream-zip's chunking without being sliced and joined again. With `fast`, the GET goes
        the hand-signed way (shared/fasts3.py) and only what does not answer 200 through botocore
        (whose error, a missing object's included, is then the one raised)."""
        opened = await fast.open(bucket or self.bucket, key) if fast is not None else None
        body: Any
        if opened is not None:
            body, read = opened, opened.content.read  # aiohttp checks Content-Length at the end
        else:
            resp = await self.client.get_object(Bucket=bucket or self.bucket, Key=key)
            body = resp["Body"]
            read = body.read  # the body checks Content-Length at the end
        pending: list[bytes] = []
        size = 0
        async with body:  # not `as body`: botocore's __aenter__ returns the bare aiohttp response
            while piece := await read(chunk - size):
                if not pending and len(piece) == chunk:
                    yield piece
                    continue
                pending.append(piece)
                size += len(piece)
                if size == chunk:
                    yield b"".join(pending)
                    pending, size = [], 0
        if pending:
            yield b"".join(pending)

    async def download(self, key: str, path: str, bucket: str | None = None) -> int:
        """Stream an object to a local file (for tools that need a path, like ffmpeg)."""
        size = 0
        with open(path, "wb") as out:
            async for piece in self.iter_bytes(key, bucket):
                out.write(piece)
                size += len(piece)
        return size

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream", *,
                        fast: FastS3 | None = None) -> None:
        """With `fast`, sent on the hand-signed path first, repeated by botocore when that does
        not succeed (shared/fasts3.py)."""
        if fast is not None and await fast.put(self.bucket, key, data, content_type):
            return
        await self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, ChecksumAlgorithm="CRC32"
        )

    async def upload_file(self, key: str, path: str, content_type: str = "application/octet-stream", *,
                          fast: FastS3 | None = None) -> None:
        """With `fast`, a file of up to FAST_FILE bytes is read whole and sent as `put_bytes` does:
        botocore reads a file three times (CRC-32, payload SHA-256, the body) in small pieces on
        the event loop (a 6.6 MB video: ~21 against ~16 ms of CPU, 75-119 against ~62 ms wall)."""
        data = await asyncio.to_thread(_read_small, path, FAST_FILE) if fast is not None else None
        if data is not None:
            return await self.put_bytes(key, data, content_type, fast=fast)
        with open(path, "rb") as f:
            await self.client.put_object(
                Bucket=self.bucket, Key=key, Body=f, ContentType=content_type, ChecksumAlgorithm="CRC32"
            )

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def list_keys(self, prefix: str, bucket: str | None = None) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket or self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    async def presign(self, key: str, ttl: float | None = None, filename: str | None = None) -> str:
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        url: str = await self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=int(ttl or self.settings.url_ttl)
        )
        return url

    def multipart(self, key: str, content_type: str = "application/octet-stream", *, part_size: int = MIN_PART,
                  queue: int = UPLOAD_QUEUE, fast: FastS3 | None = None) -> MultipartUpload:
        return MultipartUpload(self, key, content_type, part_size=part_size, queue=queue, fast=fast)

    async def open_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        resp = await self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [(u["Key"], u["UploadId"]) for u in resp.get("Uploads", [])]

    async def abort_multipart_uploads(self, prefix: str) -> int:
        """Abort leftovers of a crashed writer (a redelivered export starts from scratch)."""
        uploads = await self.open_multipart_uploads(prefix)
        for key, upload_id in uploads:
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        return len(uploads)


class MultipartUpload:
    """Feed bytes in any sizes; a part goes out once `part_size` bytes have gathered, and up to
    `queue` parts upload at once while the writer keeps producing (lib-storage's queue of 4):
    one part at a time left the writer idle for each part's round trip. A write waits for a free
    slot, so memory stays at about (queue + 1) × part_size. A failed part fails the next write or
    `complete()`; `abort()` cancels what is in flight and leaves nothing behind.

    A part is the written pieces themselves, not a copy (`PartBody`): bytes cannot change, so
    holding them is safe (a mutable buffer is copied once); pieces under 256 KiB are gathered
    into one block first, so the socket gets few, big writes. Before, each part was gathered in
    a fresh BytesIO that botocore's payload SHA-256 read back in new 1 MiB pieces and aiohttp in
    new 256 KiB pieces: four copies of every byte, three into freshly mapped pages (~1 µs of page
    fault per 4 KiB, ~0.8 s of CPU per GB on their own)."""

    def __init__(self, storage: Storage, key: str, content_type: str, *, part_size: int = MIN_PART,
                 queue: int = UPLOAD_QUEUE, fast: FastS3 | None = None) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 parts (all but the last) are at least 5 MiB")
        self.storage = storage
        self.fast = fast  # parts sent hand-signed (shared/fasts3.py), botocore repeating any that fails
        self.key = key
        self.content_type = content_type
        self.part_size = part_size
        self.upload_id: str | None = None
        self.bytes_written = 0
        self._blocks: list[memoryview] = []  # the next part
        self._gathered = 0  # its bytes, the small pieces included
        self._small = bytearray()  # small pieces, gathered into one block
        self._numbers = 0
        self._etags: dict[int, str] = {}
        self._slots = asyncio.Semaphore(max(1, queue))
        self._flying: set[asyncio.Task[None]] = set()
        self._failed: BaseException | None = None
        # a part's payload SHA-256 (SigV4), if the writer already has it: the export's ZIP thread
        # hashes each part while its bytes are still in cache, off the loop (finalize/zipthread.py)
        self.part_sha256: Callable[[int], str | None] | None = None

    @property
    def parts(self) -> list[dict[str, Any]]:
        return [{"PartNumber": n, "ETag": self._etags[n]} for n in sorted(self._etags)]

    async def start(self) -> None:
        resp = await self.storage.client.create_multipart_upload(
            Bucket=self.storage.bucket, Key=self.key, ContentType=self.content_type
        )
        self.upload_id = resp["UploadId"]

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.bytes_written += len(data)
        if len(data) < SMALL_WRITE:
            self._small += data
            self._gathered += len(data)
            if len(self._small) >= SMALL_WRITE:
                self._seal_small()
        else:
            self._seal_small()
            view = memoryview(data if isinstance(data, bytes) else bytes(data))
            while len(view) > self.part_size - self._gathered:  # a piece bigger than the part: cut, not copied
                room = self.part_size - self._gathered
                self._blocks.append(view[:room])
                self._gathered += room
                view = view[room:]
                await self._submit(self._take())
            self._blocks.append(view)
            self._gathered += len(view)
        if self._gathered >= self.part_size:
            await self._submit(self._take())

    def _seal_small(self) -> None:
        if self._small:
            self._blocks.append(memoryview(bytes(self._small)))
            self._small = bytearray()

    def _take(self) -> list[memoryview]:
        self._seal_small()
        blocks, self._blocks, self._gathered = self._blocks, [], 0
        return blocks

    async def _submit(self, blocks: list[memoryview]) -> None:
        self._raise_failed()
        if self.upload_id is None:
            await self.start()
        await self._slots.acquire()
        try:
            self._raise_failed()  # a part may have failed while we waited for its slot
        except BaseException:
            self._slots.release()
            raise
        self._numbers += 1
        task = asyncio.create_task(self._send(self._numbers, blocks))
        self._flying.add(task)
        task.add_done_callback(self._landed)

    async def _send(self, number: int, blocks: list[memoryview]) -> None:
        try:
            etag = None
            if self.fast is not None and self.upload_id is not None:  # ~2 ms of botocore per part less
                digest = self.part_sha256(number) if self.part_sha256 is not None else None
                if digest is None:
                    payload = hashlib.sha256()  # what botocore's SigV4 hashes too
                    for block in blocks:
                        payload.update(block)
                    digest = payload.hexdigest()
                etag = await self.fast.upload_part(self.storage.bucket, self.key, self.upload_id, number,
                                                   PartBody(blocks), digest)
            if etag is None:
                resp = await self.storage.client.upload_part(
                    Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                    Body=PartBody(blocks),
                )
                etag = resp["ETag"]
            self._etags[number] = etag
        finally:
            self._slots.release()

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._flying.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failed is None:
            self._failed = task.exception()

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    async def complete(self) -> None:
        if self._gathered or self._numbers == 0:  # an empty object is one empty part
            await self._submit(self._take())
        while self._flying:
            await asyncio.wait(set(self._flying))
        self._raise_failed()
        await self.storage.client.complete_multipart_upload(
            Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    async def abort(self) -> None:
        flying = set(self._flying)
        for task in flying:
            task.cancel()
        if flying:  # parts still on the wire would otherwise land after the abort
            await asyncio.wait(flying)
        if self.upload_id is not None:
            with contextlib.suppress(ClientError):
                await self.storage.client.abort_multipart_upload(
                    Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id
                )
        self._blocks, self._gathered, self._small = [], 0, bytearray()


class PartBody(Payload):
    """A part's blocks as one upload body, read in place by both of its readers: botocore (SigV4's
    payload SHA-256 through `read`/`seek`, `len` for the Content-Length, a seek back to 0 before a
    retry) and aiohttp (an aiohttp `Payload` is sent as is: aiobotocore passes botocore's body
    through unless it is an `io.IOBase`).

    A bytes body would be wrapped in a BytesIO that both read back in fresh copies; a bytearray
    would be sliced whole and then joined to the request headers (aiohttp on Python < 3.12.9 joins
    instead of `writelines`). Here only the first 64 KiB are joined to the headers, and each block
    goes to the socket as it is (the transport copies only what the socket did not take at once)."""

    _autoclose = True  # nothing to close: the blocks belong to the upload

    def __init__(self, blocks: list[memoryview]) -> None:
        super().__init__(blocks)
        self._blocks = blocks
        self._size = self._length = sum(len(block) for block in blocks)
        self._index = self._offset = self._position = 0

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes | memoryview:
        """Up to `n` bytes, from one block (a file's read may return less): no copy."""
        while self._index < len(self._blocks) and self._offset == len(self._blocks[self._index]):
            self._index, self._offset = self._index + 1, 0
        if self._index == len(self._blocks):
            return b""
        if n is None or n < 0:  # the rest, whole (nothing in botocore reads so)
            rest = b"".join([self._blocks[self._index][self._offset:], *self._blocks[self._index + 1:]])
            self.seek(0, io.SEEK_END)
            return rest
        block = self._blocks[self._index]
        piece = block[self._offset:self._offset + n]
        self._offset += len(piece)
        self._position += len(piece)
        return piece

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        target = self._position = max(0, min(self._length, base + offset))
        self._index = 0
        while self._index < len(self._blocks) and target >= len(self._blocks[self._index]):
            target -= len(self._blocks[self._index])
            self._index += 1
        self._offset = target
        return self._position

    def tell(self) -> int:
        return self._position

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._blocks).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        left = self._length if content_length is None else min(self._length, content_length)
        first = True
        for block in self._blocks:
            if left <= 0:
                return
            block = block[:left]
            left -= len(block)
            if first:  # joined to the headers: a small piece
                first = False
                await writer.write(block[:HEADERS_PIECE])
                block = block[HEADERS_PIECE:]
            if block:
                await writer.write(block)


class StorageError(ConfigError):
    """S3 cannot be used as configured (unreachable, credentials refused, bucket missing)."""


class StorageUnreachable(StorageError):
    """S3 did not answer (down, wrong endpoint): the CLI exits 3 for this, 2 for the other errors."""


def content_disposition(filename: str) -> str:
    """`attachment` with the name twice, per RFC 6266: `filename="..."` in plain ASCII for old
    clients (accents dropped, anything else `_`), and `filename*=UTF-8''...` with the exact name,
    which browsers and `curl -OJ` prefer. No quote, backslash or control character gets through."""
    fallback = "".join(
        c if " " <= c <= "~" and c not in '"\\' else "_"
        for c in unicodedata.normalize("NFKD", filename) if not unicodedata.combining(c)
    ).strip() or "download"
    exact = urllib.parse.quote(filename, safe="!#$&+^`|~")  # RFC 5987 attr-char (plus unreserved)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _read_small(path: str, limit: int) -> bytes | None:
    """The file's bytes, or None when it is bigger than `limit`."""
    with open(path, "rb") as f:
        return f.read() if os.fstat(f.fileno()).st_size <= limit else None


def is_missing(exc: ClientError) -> bool:
    """The object (or its bucket) is not there. A 403 counts: without s3:ListBucket, S3 answers
    a missing key with 403, not 404."""
    return _status(exc) in (404, 403) or _code(exc) in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _crc_from_b64(value: str) -> int:
    return int.from_bytes(base64.b64decode(value), "big")
