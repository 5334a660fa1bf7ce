"""One attempt (services/notify/send.py) against local receivers: the checked address is the one
connected to, the Host stays the URL's, redirects are answers (not followed), slow answers time out."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

import services.notify as notify
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
    hosts: list[tuple[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        hosts.append((request.headers["Host"], request.headers["User-Agent"]))
        return web.Response(status=204)

    async with serving(record) as port:
        answer = await post(f"http://localhost:{port}/hook")
    assert answer.status == 204 and answer.error is None
    [(host, agent)] = hosts
    assert host == f"localhost:{port}"
    assert agent.startswith("jetmedia-webhooks/") and "Python" not in agent and "aiohttp" not in agent


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
    assert answer.status == 302 and followed == []
    assert answer.error == f"HTTP 302: a redirect to http://127.0.0.1:{target}/stolen, not followed"


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


@contextlib.asynccontextmanager
async def raw(head: bytes, then: float = 0.0) -> AsyncIterator[int]:
    """A receiver that writes `head` as its whole answer (status line, headers, maybe a body
    start), then holds the connection `then` seconds."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        with contextlib.suppress(Exception):
            await writer.drain()
            await asyncio.sleep(then)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_2xx_whose_body_stalls_is_delivered_not_sent_again() -> None:
    async with raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", then=5) as port:
        answer = await post(f"http://127.0.0.1:{port}/hook", timeout=0.5)
    assert (answer.status, answer.error) == (200, None) and answer.seconds < 3


async def test_retry_after_of_a_429_or_503_stretches_the_next_delay_up_to_the_schedules_longest() -> None:
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    schedule = (5.0, 300.0)
    for head, wait in ((b"HTTP/1.1 429 Too Many\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n", 120),
                       (f"HTTP/1.1 503 Busy\r\nRetry-After: {later}\r\nContent-Length: 0\r\n\r\n".encode(), 90)):
        async with raw(head) as port:
            answer = await post(f"http://127.0.0.1:{port}/hook")
        assert answer.retry_after is not None and abs(answer.retry_after - wait) < 3
        assert answer.error is not None and "asked to retry after" in answer.error
        assert abs(notify.retry_delay(answer, 1, schedule) - wait) < 3  # not the schedule's 5 s
    asks_a_day = send.Answer(429, 0.1, retry_after=86400.0)
    assert notify.retry_delay(asks_a_day, 1, schedule) == 300.0  # capped
    assert notify.retry_delay(send.Answer(500, 0.1), 1, schedule) == 5.0


async def test_a_resolver_that_never_answers_ends_the_attempt_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(host: str, port: int) -> tuple[safety.IPAddress, ...]:
        await asyncio.Event().wait()
        raise AssertionError

    monkeypatch.setattr(safety, "_resolve", never)
    answer = await post("http://hooks.example/hook", timeout=0.5)
    assert answer.status is None and answer.error == "the host did not resolve within 0.5 s"


def test_one_receiver_is_one_limit_however_its_url_is_written() -> None:
    assert notify.receiver_of("http://hooks.example/a") == notify.receiver_of("HTTP://Hooks.Example:80/b?x") \
        == "hooks.example:80"
    assert notify.receiver_of("https://bücher.example/") == "xn--bcher-kva.example:443"


async def test_a_self_signed_receiver_is_named_as_such(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(subprocess.run, ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                                             str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
                            check=True, capture_output=True)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0, ssl=tls)
    try:
        answer = await post(f"https://localhost:{server.sockets[0].getsockname()[1]}/hook")
    finally:
        server.close()
    assert answer.status is None
    assert answer.error == "the receiver's TLS certificate is not trusted: self-signed certificate"


async def test_a_name_that_rebinds_after_the_check_is_still_connected_at_the_checked_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DNS server answering 127.0.0.1 (allowed here) to the check and 10.255.255.1 after: the
    client must not ask again. Only the first answer is ever used."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    asked: list[str] = []

    async def rebinding(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host == "rebind.example":
            asked.append(host)
            host = "127.0.0.1" if len(asked) == 1 else "10.255.255.1"
        return await real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async with serving(ok) as port:
        answer = await post(f"http://rebind.example:{port}/hook")
    assert (answer.status, asked) == (204, ["rebind.example"])
