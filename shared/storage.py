"""S3 access for every stage: any endpoint (AWS, MinIO, R2, B2, the embedded one).

One aioboto3 client per process, opened with `Storage.open()` and closed on shutdown.
Media never travels on the bus; stages pass keys and stream bytes through here. Uploads carry
a CRC-32 checksum so the export stage can store members without reading them twice.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .config import Settings
from .errors import is_transient as is_transient  # the error table lives in shared.errors

MIN_PART = 8 * 1024 * 1024  # S3's floor is 5 MiB; 8 MiB keeps part counts low for big archives


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str | None
    crc32: int | None  # present when the object was uploaded with a CRC32 checksum (single part)
    etag: str | None = None


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

    async def ensure_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self.client.create_bucket(Bucket=self.bucket)

    async def head(self, key: str, bucket: str | None = None) -> ObjectInfo | None:
        try:
            resp = await self.client.head_object(Bucket=bucket or self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _status(exc) in (404, 403) or _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        crc = resp.get("ChecksumCRC32")
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            content_type=resp.get("ContentType"),
            crc32=_crc_from_b64(crc) if crc and "-" not in crc else None,
            etag=resp.get("ETag"),
        )

    async def get_bytes(self, key: str, bucket: str | None = None, *, first: int | None = None) -> bytes:
        """The whole object, or only its `first` bytes (for sniffing)."""
        extra = {"Range": f"bytes=0-{first - 1}"} if first else {}
        resp = await self.client.get_object(Bucket=bucket or self.bucket, Key=key, **extra)
        async with resp["Body"] as body:
            data: bytes = await body.read()
            return data

    async def iter_bytes(self, key: str, bucket: str | None = None, chunk: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """Stream an object without holding it: memory stays at one chunk."""
        resp = await self.client.get_object(Bucket=bucket or self.bucket, Key=key)
        body = resp["Body"]
        async with body:  # not `as body`: __aenter__ returns the bare aiohttp response
            async for piece in body.iter_chunks(chunk):
                yield piece

    async def download(self, key: str, path: str, bucket: str | None = None) -> int:
        """Stream an object to a local file (for tools that need a path, like ffmpeg)."""
        size = 0
        with open(path, "wb") as out:
            async for piece in self.iter_bytes(key, bucket):
                out.write(piece)
                size += len(piece)
        return size

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, ChecksumAlgorithm="CRC32"
        )

    async def upload_file(self, key: str, path: str, content_type: str = "application/octet-stream") -> None:
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
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = await self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=int(ttl or self.settings.url_ttl)
        )
        return url

    def multipart(self, key: str, content_type: str = "application/octet-stream") -> MultipartUpload:
        return MultipartUpload(self, key, content_type)

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
    """Feed bytes in any sizes; parts of MIN_PART go out as they fill. `abort()` leaves nothing."""

    def __init__(self, storage: Storage, key: str, content_type: str) -> None:
        self.storage = storage
        self.key = key
        self.content_type = content_type
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self._buffer = bytearray()
        self.bytes_written = 0

    async def start(self) -> None:
        resp = await self.storage.client.create_multipart_upload(
            Bucket=self.storage.bucket, Key=self.key, ContentType=self.content_type
        )
        self.upload_id = resp["UploadId"]

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.bytes_written += len(data)
        while len(self._buffer) >= MIN_PART:
            part = bytes(self._buffer[:MIN_PART])
            del self._buffer[:MIN_PART]
            await self._send(part)

    async def _send(self, data: bytes) -> None:
        if self.upload_id is None:
            await self.start()
        number = len(self.parts) + 1
        resp = await self.storage.client.upload_part(
            Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        self.parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    async def complete(self) -> None:
        if self._buffer or not self.parts:
            await self._send(bytes(self._buffer))
            self._buffer.clear()
        await self.storage.client.complete_multipart_upload(
            Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    async def abort(self) -> None:
        if self.upload_id is not None:
            with contextlib.suppress(ClientError):
                await self.storage.client.abort_multipart_upload(
                    Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id
                )
        self._buffer.clear()


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _crc_from_b64(value: str) -> int:
    return int.from_bytes(base64.b64decode(value), "big")
