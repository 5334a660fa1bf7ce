"""The embedded S3 endpoint (shared/s3server.py): keep-alive, S3 only, big bodies intact."""

from __future__ import annotations

import asyncio
import http.client
import os

from shared.devstack import EmbeddedStack
from shared.runtime import Services


def test_connections_are_kept_alive(stack: EmbeddedStack) -> None:
    """moto's own server closed the connection after every response: a TCP connect and a new
    thread per S3 call. Three requests here must share one connection."""
    assert stack.s3 is not None
    conn = http.client.HTTPConnection("127.0.0.1", stack.s3.port, timeout=10)
    try:
        conn.connect()
        first = conn.sock
        for path in ("/moto-api/", "/", "/jetmedia-no-such-bucket"):
            response = _request(conn, path)
            assert not response.will_close, f"{path}: {response.getheader('Connection')}"
        assert conn.sock is first
    finally:
        conn.close()


def _request(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path, headers={"Authorization": _AUTH})
    response = conn.getresponse()
    response.read()
    return response


_AUTH = "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0"


async def test_big_objects_and_ranges_round_trip(services: Services) -> None:
    """Bodies over a megabyte (botocore sends `Expect: 100-continue`) and ranged reads."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    await services.storage.put_bytes("s3server/big.bin", data)
    assert await services.storage.get_bytes("s3server/big.bin") == data
    assert await services.storage.get_bytes("s3server/big.bin", first=1000) == data[:1000]
    info = await services.storage.head("s3server/big.bin")
    assert info is not None and info.size == len(data) and info.crc32 is not None


async def test_empty_objects_do_not_hang(services: Services) -> None:
    """botocore sends `Expect: 100-continue` with an empty body; waitress alone waits for a body
    that never comes (shared/s3server.py works around it)."""
    await asyncio.wait_for(services.storage.put_bytes("s3server/empty", b""), 10)
    assert await services.storage.get_bytes("s3server/empty") == b""
