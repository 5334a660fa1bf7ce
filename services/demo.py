"""`jetmedia demo`: a fresh embedded stack, sample media through every stage, the results.

Exits 0 when every sample ended the way it should: photos, a song and a video `ready` with their
variants and transcodes in S3, the deliberately broken file `failed` with a clear reason (and
a dead letter), the export `ready`, and its `export.ready` delivered by the notify stage as a
signed webhook to a receiver on 127.0.0.1 that checks the signature.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import secrets
import shutil
from pathlib import Path

from aiohttp import web

from shared import bus
from shared import messages as m
from shared.config import Settings
from shared.runtime import Services, run_stages

from . import samples, stages
from .cli import embedded
from .client import output_console, print_jobs, publish_asset, read_dead_letters, wait_for_jobs
from .notify import signing
from .transcode.samples import lavfi

console = output_console()


def sample_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the status the demo expects)."""
    return {
        "landscape.jpg": (samples.photo(3000, 2000), "ready"),
        "rotated-phone-shot.jpg": (samples.photo(1200, 900, orientation=6), "ready"),
        "logo-with-alpha.png": (samples.png_with_alpha(), "ready"),
        "not-really-an-image.jpg": (b"this is a text file pretending to be a JPEG\n", "failed"),
        "tone.flac": (lavfi("flac", 3.0), "ready"),
        "test-pattern.mov": (lavfi("mov", 3.0, size="640x360"), "ready"),
    }


async def run_demo(settings: Settings, data_dir: Path) -> int:
    shutil.rmtree(data_dir, ignore_errors=True)
    console.print(f"[bold]jetmedia demo[/]: starting nats-server and a local S3 endpoint in {data_dir}")
    async with embedded(settings.replace(metrics_port=0), data_dir) as (stack, local):
        assert stack.nats and stack.s3
        console.print(f"  NATS {stack.nats.url}   S3 {stack.s3.url}")
        stopping = asyncio.Event()
        receiver = await Receiver.start()
        local = local.replace(webhook_secret=receiver.secret, webhook_allow_networks=("127.0.0.1/32",))
        async with Services.open(local, name="jetmedia-demo") as services:
            await services.storage.ensure_bucket()
            workers = asyncio.create_task(run_stages(services, stages.load_all(), stopping))
            notify = asyncio.create_task(stages.load_periodic("notify")(services, stopping))
            try:
                expected: dict[str, str] = {}
                for name, (data, outcome) in sample_files().items():
                    key = f"uploads/demo/{name}"
                    await services.storage.put_bytes(key, data)
                    job = await publish_asset(services, key, event_id=f"demo-{Path(name).stem}")
                    expected[job] = outcome
                    console.print(f"  uploaded {name:<26} {len(data):>9,} B  -> job {job}")
                jobs = await wait_for_jobs(services.jobs, list(expected), timeout=300, label="job")
                print_jobs(jobs)
                for record in jobs:
                    for out in record.outputs:
                        url = await services.storage.presign(out.key)
                        console.print(f"  {record.id} {out.preset}: {url}", soft_wrap=True)
                letters = await read_dead_letters(services)
                for letter in letters:
                    console.print(f"  dead letter: stage={letter.data.stage} job={letter.data.job} "
                                  f"{letter.data.error_class}: {letter.data.error}")
                statuses = {record.id: str(record.status) for record in jobs}
                ok = all(statuses.get(job_id) == want for job_id, want in expected.items())
                ok = await export_uploads(services, receiver.url) and ok
                ok = await receiver.report() and ok
                console.print("[green]demo OK[/]" if ok else f"[red]demo FAILED[/]: {statuses} != {expected}")
                return 0 if ok else 1
            finally:
                stopping.set()
                await asyncio.gather(workers, notify)
                await receiver.stop()


async def export_uploads(services: Services, callback_url: str) -> bool:
    """The export flow: every demo upload (a missing one on purpose) into one ZIP, and its URL."""
    request = m.ExportRequested(id="demo-export", source="jetmedia-demo", time=m.now(), data=m.ExportRequestedData(
        prefix="uploads/demo/", keys=["uploads/demo/deleted-before-export.jpg"], name="jetmedia-demo",
        callback_url=callback_url))
    await bus.publish(services.js, m.UPLOAD_EXPORT, request)
    [job] = await wait_for_jobs(services.jobs, ["demo-export"], timeout=300, label="export")
    if job.status != "ready":
        console.print(f"[red]export {job.status}[/]: {[e.reason for e in job.errors]}")
        return False
    size = sum(part.bytes for part in job.exports)
    console.print(f"  export: {job.archived} files ({job.missing_count} missing, listed in manifest.json), "
                  f"{size:,} B zip, download until {job.expires:%Y-%m-%d %H:%M} UTC:")
    console.print(f"  {job.url}", soft_wrap=True)
    return True


class Receiver:
    """A webhook receiver on 127.0.0.1, as a user's back-end would run one: it verifies each
    delivery's Standard Webhooks signature with the shared secret and keeps what arrived."""

    def __init__(self) -> None:
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        self.app = web.Application()
        self.app.router.add_post("/hooks/jetmedia", self.handle)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.url = ""
        self.verified: list[tuple[str, str]] = []  # (webhook-id, event type)
        self.refused = 0
        self.arrived = asyncio.Event()

    @classmethod
    async def start(cls) -> Receiver:
        receiver = cls()
        await receiver.runner.setup()
        site = web.TCPSite(receiver.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        receiver.url = f"http://127.0.0.1:{port}/hooks/jetmedia"
        return receiver

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id, stamp = request.headers.get("webhook-id", ""), request.headers.get("webhook-timestamp", "0")
        want = signing.signature(signing.secret_bytes(self.secret), msg_id, int(stamp), body)
        if not any(hmac.compare_digest(want, sig) for sig in request.headers.get("webhook-signature", "").split()):
            self.refused += 1
            return web.Response(status=401)
        self.verified.append((msg_id, str(type(m.decode(body)).__struct_config__.tag)))
        self.arrived.set()
        return web.Response(status=204)

    async def report(self, timeout: float = 30.0) -> bool:
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout)
        except TimeoutError:
            console.print(f"[red]no webhook arrived at {self.url} within {timeout:.0f} s[/]")
            return False
        for msg_id, kind in self.verified:
            console.print(f"  webhook: {kind} (webhook-id {msg_id}) delivered to {self.url}, signature verified")
        return self.refused == 0

    async def stop(self) -> None:
        await self.runner.cleanup()
