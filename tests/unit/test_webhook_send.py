"""One attempt (services/notify/send.py) against local receivers: the checked address is the one
connected to, the Host stays the URL's, redirects are answers (not followed), slow answers time out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from services.notify import safety, send
from shared.devstack import free_port

LOOPBACK = safety.networks(["127.0.0.0/8", "::1/128"])


@contextlib.asynccontextmanager
async def serving(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def post(url: str, timeout: float = 5.0) -> send.Answer:
    return await send.post(url, b"{}", {"content-type": "application/json"}, allowed=LOOPBACK,
                           connect_timeout=1.0, timeout=timeout)


async def test_a_name_is_connected_to_at_its_checked_address_with_its_own_host_header() -> None:
    hosts: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hosts.append(request.headers["Host"])
        return web.Response(status=204)

    async with serving(record) as port:
        answer = await post(f"http://localhost:{port}/hook")
    assert answer.status == 204 and answer.error is None
    assert hosts == [f"localhost:{port}"]


async def test_redirects_are_not_followed() -> None:
    followed: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.Response(status=200)

    async with serving(elsewhere) as target:
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"http://127.0.0.1:{target}/stolen")

        async with serving(redirect) as port:
            answer = await post(f"http://127.0.0.1:{port}/hook")
    assert answer.status == 302 and answer.error == "HTTP 302" and followed == []


async def test_a_receiver_slower_than_the_total_timeout_is_an_error_not_a_hang() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=200)

    async with serving(slow) as port:
        answer = await post(f"http://127.0.0.1:{port}/hook", timeout=0.5)
    assert answer.status is None and answer.error == "no answer within 0.5 s" and answer.seconds < 3


async def test_only_the_first_kilobyte_of_an_answer_is_kept() -> None:
    async def chatty(request: web.Request) -> web.Response:
        return web.Response(status=500, text="é" * 100_000)

    async with serving(chatty) as port:
        answer = await post(f"http://127.0.0.1:{port}/hook")
    assert answer.status == 500 and len(answer.body.encode()) <= 1024 + 3
