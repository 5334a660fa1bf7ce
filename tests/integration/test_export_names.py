"""A real user's folder exported by prefix: keys with URL-special characters, NFC and NFD forms of
one name, case-only twins, empty objects with and without a CRC, a ZIP inside, the empty
"folder" objects S3 consoles create; and an archive name with quotes, a slash and accents.
Every unzip tool reads the archive, unzip and bsdtar extract it inside their directory, and
each file holds its source's bytes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import unicodedata
import urllib.request
import zipfile
from pathlib import Path

from services import stages
from shared import bus
from shared import messages as m
from shared.runtime import Services
from tests.helpers import eventually, export_event, final_job, running, zip_tools_accept


def inner_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inner.txt", "inside")
    return buffer.getvalue()


SOURCES = {
    "u/q?x.txt": b"question", "u/pct%20x.txt": b"percent", "u/hash#x.txt": b"hash", "u/plus+x.txt": b"plus",
    "u/sp ace.txt": b"space", "u/amp&eq=.txt": b"amp", "u/emoji\U0001f600.txt": b"emoji",
    "u/caf\u00e9.txt": b"nfc", unicodedata.normalize("NFD", "u/caf\u00e9.txt"): b"nfd",
    "u/a.jpg": b"lower", "u/a.JPG": b"upper", "u/zero.bin": b"", "u/inner.zip": inner_zip(),
    "u/photos/": b"", "u/photos/2024/": b"", "u/photos/2024/p.jpg": b"photo",
    "u/rtl\u202egnp.exe": b"rtl", "u/CON": b"device",
}
NO_CRC = {"u/zero-nocrc.bin": b""}


async def test_a_real_folder_by_prefix_unpacks_safely_and_completely(services: Services, tmp_path: Path) -> None:
    for key, data in SOURCES.items():
        await services.storage.put_bytes(key, data)
    for key, data in NO_CRC.items():
        await services.storage.client.put_object(Bucket=services.storage.bucket, Key=key, Body=data)
    async with running(services, [stages.load(n) for n in ("upload", "chunk", "finalize")]):
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event(
            "exp-real", prefix="u/", name='Ann\'s "best"/été 100%'))
        job = await eventually(lambda: final_job(services, "exp-real"), timeout=60)
    assert job.status == "ready", job.errors
    assert job.url is not None and job.missing_count == 0

    path = tmp_path / "download.zip"

    def fetch() -> str:
        with urllib.request.urlopen(job.url, timeout=60) as resp:
            path.write_bytes(resp.read())
            return str(resp.headers["Content-Disposition"])

    disposition = await asyncio.to_thread(fetch)
    assert 'filename="Ann\'s _best__ete 100%.zip"' in disposition
    assert "filename*=UTF-8''Ann%27s%20_best__%C3%A9t%C3%A9%20100%25.zip" in disposition
    zip_tools_accept(str(path))

    with zipfile.ZipFile(path) as archive:
        names = [info.filename for info in archive.infolist()]
        manifest = json.loads(archive.read("manifest.json"))
    sources = {**SOURCES, **NO_CRC}
    expected = {key: data for key, data in sources.items() if not key.endswith("/")}  # folder markers: nothing
    assert sorted(e["key"] for e in manifest["files"]) == sorted(expected)
    assert "photos" not in names and "photos/2024/p.jpg" in names  # the folder is not renamed "photos (1)"
    assert {"café.txt", "café (1).txt", "a.JPG", "a (1).jpg", "q_x.txt", "_CON", "rtlgnp.exe"} <= set(names)

    for tool in (["unzip", "-q", str(path), "-d"], ["bsdtar", "-xf", str(path), "-C"]):
        out = tmp_path / tool[0]
        out.mkdir()
        await asyncio.to_thread(subprocess.run, [*tool, str(out)], check=True, timeout=60)
        files = {str(p.relative_to(out)): p for p in out.rglob("*") if p.is_file()}
        assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
        assert len(files) == len(expected) + 2  # README.txt and manifest.json
        for entry in manifest["files"]:
            data = files[entry["name"]].read_bytes()
            assert data == expected[entry["key"]], entry
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
