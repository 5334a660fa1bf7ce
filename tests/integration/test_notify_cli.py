"""`jetmedia webhooks test URL`: one signed sample event, verified by an independent implementation."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys

from aiohttp import web
from standardwebhooks import Webhook

from shared import messages as m
from shared.devstack import free_port

SECRET = "whsec_" + base64.b64encode(b"a-secret-for-the-cli-test-32byte").decode()


async def jetmedia(*args: str, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("JETMEDIA_")}, **env})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_webhooks_test_sends_a_signed_sample_and_refuses_unsafe_urls() -> None:
    got: list[object] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(Webhook(SECRET).verify(await request.read(), dict(request.headers)))  # raises if not signed right
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, out = await jetmedia("webhooks", "test", f"http://127.0.0.1:{port}/hook", "--secret", SECRET,
                                   JETMEDIA_WEBHOOK_ALLOW_NETWORKS="127.0.0.1/32")
        assert (code, got and len(got)) == (0, 1), out
        assert f"http://127.0.0.1:{port}/hook: HTTP 204" in out
        event = m.decode(json.dumps(got[0]).encode())  # verify() returns the parsed body
        assert isinstance(event, m.AssetReady) and event.subject == "webhook-test"

        # loopback not allowed (the default): refused before any connection, exit 2
        code, out = await jetmedia("webhooks", "test", f"http://127.0.0.1:{port}/hook", JETMEDIA_WEBHOOK_SECRET=SECRET)
        assert code == 2 and "127.0.0.1 is a loopback address; refused" in out, out
        assert len(got) == 1
    finally:
        await runner.cleanup()
