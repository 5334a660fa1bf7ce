"""Whole-object GET and PUT on the hot path of a photo, without botocore's per-request machinery.

Through aiobotocore one request costs the event loop ~2.1-2.4 ms of Python (endpoint rules,
event hooks, parsers, retry handlers, cookie jar), whatever its size: a photo's sniffing GET,
source GET and two variant PUTs were ~9 ms of the ~30 ms the pipeline's event loop spends per
photo, on a 2-core machine where that time is taken from the image work (docs/benchmarks.md,
"Variant"). Here a request is signed with SigV4 by hand and sent on a plain aiohttp session:
~0.3 ms.

Only the success path is ours. Anything else (an error status, a timeout, a connection lost
midway) returns None, and the caller repeats the request through `Storage` (botocore): its
retries, errors (`ClientError`) and messages stay the only ones there are. Each such hand-back is
counted (`jetmedia_s3_fast_fallbacks_total{op,reason}`): an endpoint that always answers this path
with an error would otherwise double its requests unseen. A connection that cannot be opened at
all is raised instead: that is an outage, for the S3 breaker (shared/breaker.py) to see at once.
The requests are idempotent (a GET, a PUT of the same bytes to the same key), so the
repeat is safe. Used only for a configured endpoint with static keys (SeaweedFS, MinIO, R2, ...);
with AWS' default endpoint, credentials from the environment or JETMEDIA_S3_FAST_PATH=false
`FastS3.usable` is False and every request goes through botocore.

The export uses it too (one request per source, or per part, costs the same ~2 ms there): the
chunk stage's HEADs, finalize's streaming source GETs and multipart parts (`head`, `open`,
`upload_part`; a part is idempotent too: the same bytes under the same number).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import logging
import urllib.parse
import zlib

import aiohttp
import yarl

from . import metrics
from .config import Settings

log = logging.getLogger("jetmedia.fasts3")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=60, sock_read=60)  # botocore's defaults


Head = tuple[int, int | None, str | None, datetime.datetime | None]  # size, CRC-32, ETag, Last-Modified

class FastS3:
    def __init__(self, settings: Settings) -> None:
        self.endpoint = (settings.s3_endpoint or "").rstrip("/")
        self.region = settings.s3_region
        self.access_key = settings.s3_access_key or ""
        self.secret_key = settings.s3_secret_key or ""
        self.usable = bool(settings.s3_fast_path and self.endpoint and self.access_key and self.secret_key)
        self.host = urllib.parse.urlsplit(self.endpoint).netloc
        self._session: aiohttp.ClientSession | None = None
        self._keys: tuple[str, bytes] = ("", b"")  # (date, signing key of that date)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=None), timeout=TIMEOUT,
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def get(self, bucket: str, key: str, *, first: int | None = None) -> tuple[bytes, str | None] | None:
        """The object (or its `first` bytes) and its Content-Range; None: ask botocore."""
        if not self.usable:
            return None
        extra = {"Range": f"bytes=0-{first - 1}"} if first else {}
        try:
            async with self._http().get(self._url(bucket, key), headers=self._sign("GET", bucket, key, EMPTY_SHA256,
                                                                                   extra)) as resp:
                if resp.status not in (200, 206):
                    _status("get", resp.status, bucket, key)
                    return None
                body = await resp.read()
                if resp.content_length is not None and len(body) != resp.content_length:
                    _failed("get", f"{len(body)} of {resp.content_length} bytes came", bucket, key)
                    return None
                return body, resp.headers.get("Content-Range")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            _failed("get", exc, bucket, key)
            return None

    async def put(self, bucket: str, key: str, data: bytes, content_type: str) -> bool:
        """PUT with a CRC-32 checksum, like Storage.put_bytes; False: ask botocore."""
        if not self.usable:
            return False
        crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        extra = {"Content-Type": content_type, "x-amz-checksum-crc32": crc, "x-amz-sdk-checksum-algorithm": "CRC32"}
        try:
            async with self._http().put(self._url(bucket, key), data=data, headers=self._sign(
                    "PUT", bucket, key, hashlib.sha256(data).hexdigest(), extra)) as resp:
                await resp.read()
                if resp.status == 200:
                    return True
                _status("put", resp.status, bucket, key)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            _failed("put", exc, bucket, key)
        return False

    async def head(self, bucket: str, key: str) -> Head | None:
        """Size, CRC-32 (when S3 holds a whole-object one), ETag and Last-Modified, as
        `Storage.head` reads them, for the export's chunk stage (a HEAD per source: ~1.6 ms of
        botocore each, 720 of them before a 2 GB export of 2.8 MiB files can start). None: ask
        botocore, a 404 included."""
        if not self.usable:
            return None
        try:
            async with self._http().head(self._url(bucket, key), headers=self._sign(
                    "HEAD", bucket, key, EMPTY_SHA256, {"x-amz-checksum-mode": "ENABLED"})) as resp:
                if resp.status != 200 or resp.content_length is None:
                    _status("head", resp.status, bucket, key)
                    return None
                crc = resp.headers.get("x-amz-checksum-crc32")
                crc32 = int.from_bytes(base64.b64decode(crc), "big") if crc and "-" not in crc else None
                modified = _http_date(resp.headers.get("Last-Modified"))
                return resp.content_length, crc32, resp.headers.get("ETag"), modified
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            _failed("head", exc, bucket, key)
            return None

    async def open(self, bucket: str, key: str) -> aiohttp.ClientResponse | None:
        """A streaming GET (the export's sources: ~2 ms of botocore each, 720 in a 2 GB export of
        2.8 MiB files): the response, status 200, for the caller to read and release. None: ask
        botocore (a 404 included, whose answer says which is missing). An error while reading
        the body is the caller's, as it is through botocore."""
        if not self.usable:
            return None
        try:
            resp = await self._http().get(self._url(bucket, key),
                                          headers=self._sign("GET", bucket, key, EMPTY_SHA256, {}))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            _failed("open", exc, bucket, key)
            return None
        if resp.status != 200:
            resp.release()
            _status("open", resp.status, bucket, key)
            return None
        return resp

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: aiohttp.payload.Payload,
                          sha256: str) -> str | None:
        """One multipart part (`body` read in place, `sha256` its payload hash for SigV4); its
        ETag, or None: ask botocore (the same part again is harmless)."""
        if not self.usable:
            return None
        query = f"partNumber={number}&uploadId={urllib.parse.quote(upload_id, safe='-_.~')}"
        try:
            async with self._http().put(self._url(bucket, key, query), data=body, headers=self._sign(
                    "PUT", bucket, key, sha256, {}, query)) as resp:
                await resp.read()
                etag = resp.headers.get("ETag")
                if resp.status == 200 and etag:
                    return etag
                _status("part", resp.status, bucket, key, number)
                return None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            _failed("part", exc, bucket, key, number)
            return None

    def _url(self, bucket: str, key: str, query: str = "") -> yarl.URL:
        """Already encoded: yarl would otherwise resolve `.` and `..` segments (S3 keys may hold
        them, and `a/../b.jpg` would name another object, `b.jpg`)."""
        return yarl.URL(f"{self.endpoint}{self._path(bucket, key)}{'?' + query if query else ''}", encoded=True)

    @staticmethod
    def _path(bucket: str, key: str) -> str:
        """The key percent-encoded as botocore sends it (safe: `/` and `~`), the same bytes in the
        URL and in the signature (S3 signs the path as sent, without normalising it)."""
        return "/" + urllib.parse.quote(bucket, safe="") + "/" + urllib.parse.quote(key, safe="/~")

    def _signing_key(self, date: str) -> bytes:
        if self._keys[0] != date:
            key = ("AWS4" + self.secret_key).encode()
            for part in (date, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = (date, key)
        return self._keys[1]

    def _sign(self, method: str, bucket: str, key: str, payload: str, extra: dict[str, str],
              query: str = "") -> dict[str, str]:
        """SigV4 headers (AWS' "Signature Version 4" for S3, path-style, no query string); every
        x-amz-* header is signed, as S3 requires."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        date = stamp[:8]
        headers = {**extra, "x-amz-content-sha256": payload, "x-amz-date": stamp}
        signed = {"host": self.host, **{k.lower(): v for k, v in headers.items() if k.lower().startswith("x-amz-")}}
        names = ";".join(sorted(signed))
        canonical = "\n".join((method, self._path(bucket, key), query, *(f"{k}:{signed[k]}" for k in sorted(signed)),
                               "", names, payload))
        scope = f"{date}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(date), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, SignedHeaders={names}, "
                                    f"Signature={signature}")
        return headers


def _status(op: str, status: int, bucket: str, key: str, part: int | None = None) -> None:
    """S3 answered other than 200: counted, logged, None for the caller (botocore repeats the
    request and turns the answer into its error, with S3's message)."""
    metrics.s3_fast_fallbacks_total.labels(op, "status").inc()
    log.debug("fast %s%s s3://%s/%s: status %d; botocore repeats it", op.upper(), f" {part}" if part else "",
              bucket, key, status)


def _failed(op: str, exc: BaseException | str, bucket: str, key: str, part: int | None = None) -> None:
    """The request failed midway (timeout, connection lost, short body): counted, logged, None for
    the caller. A connection that could not be opened at all is raised instead: it is an outage,
    not a request botocore should repeat, and raised it reaches the S3 breaker at once
    (shared/breaker.py) rather than after botocore's retries."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        raise exc
    metrics.s3_fast_fallbacks_total.labels(op, "error").inc()
    log.debug("fast %s%s s3://%s/%s failed (%s); botocore repeats it", op.upper(), f" {part}" if part else "",
              bucket, key, exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}")


def _http_date(value: str | None) -> datetime.datetime | None:
    """An HTTP date (`Last-Modified`), None when absent or unreadable (the member then gets the
    export's own date)."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
