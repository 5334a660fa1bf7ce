"""The fast GET/PUT path (shared/fasts3.py) names exactly the object botocore names, on the real
S3 server: a hand-signed request is where keys get mangled (`..` segments normalised away by the
URL library, `%` decoded twice), and a mangled key may still hit *another* object.

Not tested: `a//b` and keys ending in `/`. SeaweedFS itself stores `a//b` as `a/b` and a key ending
in `/` as a folder, whichever client sends them (botocore included), and reads `\\` as `/` (so
`a\\` is the folder `a/` too); AWS S3 keeps them apart."""

from __future__ import annotations

import unicodedata
import zlib
from pathlib import Path

import aiohttp
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared import metrics
from shared import storage as storage_module
from shared.devstack import free_port
from shared.fasts3 import FastS3
from shared.runtime import Services

KEYS = [
    "fast/what?.jpg",
    "fast/x#y.jpg", "fast/100%41.jpg", "fast/%2F%25.jpg", "fast/a+b.jpg", "fast/a b.jpg", "fast/a~b.jpg",
    "fast/a%7Eb.jpg", unicodedata.normalize("NFD", "fast/café.jpg"), "fast/日本語 ü.jpg", "fast/semi;colon=eq&amp",
    "fast/back\\slash.jpg",
]
DOTTED = ["fast/a/../b.jpg", "fast/./x.jpg", "fast/x/./y.jpg", "fast/.."]
DECOYS = ["fast/b.jpg", "fast/x.jpg", "fast/x/y.jpg", "fast"]  # where a normalised path would land


@pytest.mark.parametrize("key", KEYS)
async def test_fast_put_and_get_name_the_same_object_as_botocore(services: Services, key: str) -> None:
    fast, storage = services.fast_s3, services.storage
    assert fast.usable
    data = b"the object at " + key.encode()

    assert await fast.put(storage.bucket, key, data, "image/jpeg")  # the fast path itself, no fallback
    assert await storage.get_bytes(key) == data
    got = await fast.get(storage.bucket, key)
    assert got is not None and got[0] == data
    first = await fast.get(storage.bucket, key, first=5)
    assert first is not None and first[0] == data[:5] and first[1] == f"bytes 0-4/{len(data)}"

    await storage.put_bytes(key, data[::-1], "image/jpeg")  # written by botocore, read fast
    got = await fast.get(storage.bucket, key)
    assert got is not None and got[0] == data[::-1]


@pytest.mark.parametrize("key", DOTTED)
async def test_dot_segments_are_refused_not_resolved_to_another_object(services: Services, key: str) -> None:
    """SeaweedFS refuses `.`/`..` segments (InvalidRequest) from any client; the fast path must
    neither write nor read the object its resolved path would name."""
    fast, storage = services.fast_s3, services.storage
    for decoy in DECOYS:
        await storage.put_bytes(decoy, b"decoy " + decoy.encode(), "application/octet-stream")
    assert not await fast.put(storage.bucket, key, b"overwrite?", "image/jpeg")
    with pytest.raises(ClientError):
        await storage.put_bytes(key, b"overwrite?", "image/jpeg")
    assert await fast.get(storage.bucket, key) is None
    for decoy in DECOYS:
        assert await storage.get_bytes(decoy) == b"decoy " + decoy.encode()


segment = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.one_of(segment, st.sampled_from([".", "..", "%", "%25", "?", "+"])), min_size=1, max_size=4))
async def test_any_key_round_trips_through_the_fast_path(services: Services, parts: list[str]) -> None:
    key = "prop/" + "/".join(parts)
    stored = key.replace("\\", "/")  # SeaweedFS reads a backslash as a slash, from any client
    assume(len(key.encode()) <= 1000 and "//" not in stored and not stored.endswith("/"))  # see the docstring
    assume(not {".", ".."} & set(stored.split("/")))  # refused by the server, see above
    data = key.encode()
    assert await services.fast_s3.put(services.storage.bucket, key, data, "text/plain")
    assert await services.storage.get_bytes(key) == data
    got = await services.fast_s3.get(services.storage.bucket, key)
    assert got is not None and got[0] == data


@pytest.mark.parametrize("limit", [storage_module.FAST_FILE, 10])  # sent fast; too big, so botocore's file upload
async def test_upload_file_stores_the_file_and_its_crc32_either_way(
        services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(storage_module, "FAST_FILE", limit)
    path = tmp_path / "out.mp4"
    path.write_bytes(bytes(range(256)) * 4096)
    await services.storage.upload_file("fast/out.mp4", str(path), "video/mp4", fast=services.fast_s3)
    assert await services.storage.get_bytes("fast/out.mp4") == path.read_bytes()
    info = await services.storage.head("fast/out.mp4")
    assert info is not None and info.crc32 == zlib.crc32(path.read_bytes()) and info.content_type == "video/mp4"


def fallbacks(op: str, reason: str) -> float:
    return metrics.s3_fast_fallbacks_total.labels(op, reason)._value.get()


async def test_a_refused_request_is_counted_and_an_unreachable_endpoint_raised(services: Services) -> None:
    """A fast request S3 refuses goes back to botocore, counted (an endpoint that refuses this
    path would otherwise double every request unseen); an endpoint nobody listens on is an outage,
    raised for the S3 breaker rather than handed to botocore's retries."""
    await services.storage.put_bytes("fast/counted.jpg", b"x", "image/jpeg")
    wrong = FastS3(services.settings.replace(s3_secret_key="not-the-key"))
    try:
        before = {op: fallbacks(op, "status") for op in ("get", "put", "head")}
        assert await wrong.get(services.storage.bucket, "fast/counted.jpg") is None
        assert not await wrong.put(services.storage.bucket, "fast/counted.jpg", b"y", "image/jpeg")
        assert await wrong.head(services.storage.bucket, "fast/counted.jpg") is None
        assert {op: fallbacks(op, "status") - n for op, n in before.items()} == {"get": 1, "put": 1, "head": 1}
    finally:
        await wrong.close()
    assert await services.storage.get_bytes("fast/counted.jpg") == b"x"

    nobody = FastS3(services.settings.replace(s3_endpoint=f"http://127.0.0.1:{free_port()}"))
    try:
        errors = fallbacks("get", "error")
        with pytest.raises(aiohttp.ClientConnectorError):
            await nobody.get(services.storage.bucket, "fast/counted.jpg")
        with pytest.raises(aiohttp.ClientConnectorError):
            await nobody.head(services.storage.bucket, "fast/counted.jpg")
        assert fallbacks("get", "error") == errors
    finally:
        await nobody.close()


async def test_the_fast_path_can_be_turned_off(services: Services) -> None:
    """JETMEDIA_S3_FAST_PATH=false: no hand-signed request at all (nothing counted as handed back),
    the caller's botocore request is the only one."""
    await services.storage.put_bytes("fast/off.jpg", b"x", "image/jpeg")
    off = FastS3(services.settings.replace(s3_fast_path=False))
    before = fallbacks("get", "status"), fallbacks("put", "status")
    assert not off.usable
    assert await off.get(services.storage.bucket, "fast/off.jpg") is None
    await services.storage.put_bytes("fast/off.jpg", b"y", "image/jpeg", fast=off)
    assert (fallbacks("get", "status"), fallbacks("put", "status")) == before
    assert await services.storage.get_bytes("fast/off.jpg") == b"y"
    assert services.fast_s3.usable  # the suite's own settings keep it on
