"""Signed completion webhooks (README "Webhooks"), against the real stack and a local receiver.

The receiver is an aiohttp app on 127.0.0.1 that verifies every delivery with the `standardwebhooks`
package from PyPI: an implementation of the spec independent of ours. Tests allow 127.0.0.1
explicitly (JETMEDIA_WEBHOOK_ALLOW_NETWORKS) and shorten the retry schedule.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import services.notify as notify
from services import stages
from services.notify.records import BUCKET, Records
from shared import bus, dlq
from shared import messages as m
from shared.config import Settings
from shared.devstack import free_port
from shared.jobs import Job, new_job
from shared.runtime import Services
from tests.helpers import asset_event, eventually, export_event, final_job, running, stream_events, worker_process

SECRET = "whsec_" + base64.b64encode(b"callback-secret-for-the-tests-32").decode()
SUB_SECRET = "whsec_" + base64.b64encode(b"subscription-secret-of-the-test!").decode()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(webhook_secret=SECRET, webhook_allow_networks=("127.0.0.1/32",),
                            webhook_retry_schedule=(0.3, 0.3, 0.3), webhook_timeout=2.0, webhook_connect_timeout=1.0)


@pytest.fixture(autouse=True)
async def clean_notify(settings: Settings) -> None:
    """JM_NOTIFY and the records bucket are notify's own (conftest wipes only the bus layout)."""
    nc = await bus.connect(settings, "test-wipe-notify")
    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(notify.STREAM)
    with contextlib.suppress(Exception):
        await js.delete_key_value(BUCKET)
    await nc.close()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """Answers per path from a script (then 200); `hang` paths never answer."""

    port: int
    secrets: dict[str, str]  # path -> secret that must verify it
    script: dict[str, list[int]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> headers of its non-2xx answers
    got: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set: hanging requests answer

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            Webhook(self.secrets.get(request.path, SECRET)).verify(body, dict(request.headers))
            verified = True
        except WebhookVerificationError:
            verified = False
        self.got.append(Received(request.path, dict(request.headers), body, verified))
        self.arrived.set()
        if request.path in self.hang:
            await self.released.wait()
        status = self.script[request.path].pop(0) if self.script.get(request.path) else 200
        extra = self.headers.get(request.path, {}) if status >= 300 else {}
        return web.Response(status=status, text="x" * 3000, headers=extra)  # more than a record keeps


@contextlib.asynccontextmanager
async def receiver(**kwargs: object) -> AsyncIterator[Receiver]:
    got = Receiver(port=free_port(), secrets={}, **kwargs)  # type: ignore[arg-type]
    app = web.Application()
    app.router.add_post("/{tail:.*}", got.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", got.port).start()
    try:
        yield got
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def notifying(services: Services) -> AsyncIterator[None]:
    await notify.ensure_layout(services.js, services.settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(notify.run(services, stopping))
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def ready_job(services: Services, job_id: str, url: str | None) -> m.AssetReady:
    """A job that ended ready with a callback_url, and its final event on JM_EVENTS."""
    await services.jobs.create(new_job(job_id, "asset", status="ready", source_key=f"uploads/{job_id}.jpg",
                                       callback_url=url))
    event = m.AssetReady(id=f"{job_id}:ready", source="test", time=m.now(), subject=job_id,
                         data=m.AssetReadyData(job=job_id, asset=job_id, key=f"uploads/{job_id}.jpg", media="image",
                                               outputs=[]))
    await bus.publish(services.js, m.EVENTS_ASSET_READY, event)
    return event


async def attempts(services: Services, job: str) -> list[str]:
    records = await Records.open(services.js, services.settings)
    return [r.outcome for r in await records.of_job(services.js, job)]


async def letters(services: Services) -> list[m.DeadLetter]:
    return [e for e in await stream_events(services, "JM_DLQ", "jetmedia.dlq.notify") if isinstance(e, m.DeadLetter)]


async def test_a_failed_jobs_callback_and_a_subscription_are_signed_and_verify(services: Services) -> None:
    async with receiver() as hooks:
        hooks.secrets["/sub"] = SUB_SECRET
        subs = f'[{{"name": "ops", "url": "{hooks.url("/sub")}", "secret": "{SUB_SECRET}", "events": ["job.failed"]}}]'
        services.settings = services.settings.replace(webhooks=subs)
        async with running(services, [stages.load("upload")]), notifying(services):
            await bus.publish(services.js, m.UPLOAD_ASSET,
                              asset_event("uploads/ghost.jpg", event_id="ghost", callback_url=hooks.url("/cb")))
            await eventually(lambda: _async(len(hooks.got) >= 2))
            outcomes = await eventually(lambda: _when(attempts(services, "ghost"), lambda o: len(o) == 2))

    assert sorted(r.path for r in hooks.got) == ["/cb", "/sub"] and outcomes == ["delivered", "delivered"]
    assert all(r.verified for r in hooks.got)
    for got in hooks.got:
        assert got.headers["webhook-id"] == "ghost:failed" and got.headers["webhook-signature"].startswith("v1,")
        event = m.decode(got.body)
        assert isinstance(event, m.JobFailed) and "does not exist" in event.data.error
    # the receiver's check means something: one changed byte, or the other receiver's secret, fails it
    got = hooks.on("/cb")[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body.replace(b"ghost", b"ghust", 1), got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SUB_SECRET).verify(got.body, got.headers)


async def test_an_unusable_callback_url_fails_the_request_with_the_reason(services: Services) -> None:
    async with running(services, [stages.load("upload")]):
        await bus.publish(services.js, m.UPLOAD_ASSET,
                          asset_event("uploads/a.jpg", event_id="ftp-cb", callback_url="ftp://example.com/hook"))
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event(
            "bad-port", keys=["uploads/a.jpg"], callback_url="https://example.com:99999/hook"))
        jobs = [await eventually(_final(services, job)) for job in ("ftp-cb", "bad-port")]
    assert [job.status for job in jobs] == ["failed", "failed"]
    assert "data.callback_url: not an http(s) URL" in jobs[0].errors[-1].reason  # the schema's answer
    assert "callback_url 'https://example.com:99999/hook' is not a valid URL" in jobs[1].errors[-1].reason


async def test_500_three_times_then_200_is_delivered_once_after_four_attempts(services: Services) -> None:
    before = {outcome: _counted(outcome) for outcome in ("retry", "delivered")}
    async with receiver(script={"/flaky": [500, 500, 500]}) as hooks, notifying(services):
        event = await ready_job(services, "flaky", hooks.url("/flaky"))
        outcomes = await eventually(lambda: _when(attempts(services, "flaky"), lambda o: "delivered" in o))
        await asyncio.sleep(1.0)  # nothing more comes
    assert {outcome: _counted(outcome) - count for outcome, count in before.items()} == {"retry": 3, "delivered": 1}
    assert (REGISTRY.get_sample_value("jetmedia_webhook_seconds_count") or 0) >= 4
    assert outcomes == ["retry", "retry", "retry", "delivered"] == await attempts(services, "flaky")
    assert len(hooks.got) == 4 and all(r.verified for r in hooks.got)
    assert {r.headers["webhook-id"] for r in hooks.got} == {event.id}  # the receiver can dedupe on it
    records = await (await Records.open(services.js, services.settings)).of_job(services.js, "flaky")
    assert [r.status for r in records] == [500, 500, 500, 200]
    assert all(len(r.response) == 1024 and r.seconds > 0 for r in records)  # answers kept to 1 KB
    assert not await letters(services)


async def test_a_429_with_retry_after_is_retried_that_much_later_and_the_record_says_so(services: Services) -> None:
    services.settings = services.settings.replace(webhook_retry_schedule=(0.2, 3.0))
    async with receiver(script={"/busy": [429]}, headers={"/busy": {"Retry-After": "2"}}) as hooks, \
            notifying(services):
        await ready_job(services, "busy", hooks.url("/busy"))
        await eventually(_delivered(services, "busy"))
    records = await (await Records.open(services.js, services.settings)).of_job(services.js, "busy")
    assert [(r.outcome, r.status) for r in records] == [("retry", 429), ("delivered", 200)]
    assert records[0].error == "HTTP 429: asked to retry after 2 s"
    waited = (records[1].at - records[0].at).total_seconds()
    assert waited >= 1.8, waited  # not the schedule's 0.2 s
    assert {r.headers["webhook-id"] for r in hooks.got} == {"busy:ready"} and all(r.verified for r in hooks.got)


async def test_410_stops_further_attempts(services: Services) -> None:
    async with receiver(script={"/gone": [410]}) as hooks, notifying(services):
        await ready_job(services, "gone", hooks.url("/gone"))
        await eventually(lambda: _when(attempts(services, "gone"), lambda o: o == ["gone"]))
        await asyncio.sleep(1.5)  # five retry delays
    assert len(hooks.got) == 1 and await attempts(services, "gone") == ["gone"]
    assert not await letters(services)


async def test_a_receiver_that_never_answers_is_dead_lettered_after_the_last_attempt(services: Services) -> None:
    services.settings = services.settings.replace(webhook_retry_schedule=(0.2, 0.2), webhook_timeout=1.0)
    async with receiver(hang={"/slow"}) as hooks, notifying(services):
        await ready_job(services, "slow", hooks.url("/slow"))
        found = await eventually(lambda: letters(services), timeout=30)
        assert await attempts(services, "slow") == ["retry", "retry", "dead"] and len(hooks.got) == 3
        letter = found[0].data
        assert letter.stage == "notify" and letter.error_class == "WebhookFailed" and not letter.permanent
        assert "gave up after 3 attempts; last: no answer within 1 s" in letter.error and "slow" in letter.error
        assert letter.job is None  # replaying it re-sends the webhook and leaves the job alone

        hooks.hang.clear()  # the receiver is back: `jetmedia dlq replay --stage notify` sends it again
        assert (await dlq.replay(services, dlq.Which(stage="notify"))).replayed == [found[0].id]
        await eventually(_delivered(services, "slow"))
    assert len(hooks.got) == 4 and {r.headers["webhook-id"] for r in hooks.got} == {"slow:ready"}
    assert (await services.jobs.get("slow")).status == "ready"  # type: ignore[union-attr]


async def test_a_receiver_that_hangs_does_not_hold_up_another(services: Services) -> None:
    """Two handler slots, four deliveries to a receiver that never answers, then one to another:
    the hanging receiver gets one slot at a time, so the other is delivered before any of the
    hanging attempts has even timed out."""
    services.settings = services.settings.replace(stage_concurrency={"notify": 2}, webhook_timeout=8.0,
                                                  shutdown_grace=0.5)
    async with receiver(hang={"/slow"}) as slow, receiver() as fast, notifying(services):
        for n in range(4):
            await ready_job(services, f"slow{n}", slow.url("/slow"))
        await ready_job(services, "fast", fast.url("/fast"))
        await eventually(lambda: _when(attempts(services, "fast"), lambda o: o == ["delivered"]))
        hanging = [await attempts(services, f"slow{n}") for n in range(4)]
    assert hanging == [[], [], [], []] and len(slow.got) == 1  # one at a time, none timed out yet
    assert len(fast.got) == 1 and fast.got[0].verified


async def test_a_backlog_for_a_hanging_receiver_is_deferred_not_held_and_spends_no_attempts(
        services: Services) -> None:
    """More deliveries to one hanging receiver than the process holds (2 slots x WAITING): those
    over notify.HELD are handed back for later without an attempt, so another receiver's delivery
    still goes at once (it waited behind them all: 16 x the timeout here, far longer in production).
    A delivery deferred as often as it has attempts is still delivered once the receiver is back."""
    services.settings = services.settings.replace(stage_concurrency={"notify": 2}, webhook_timeout=3.0,
                                                  webhook_retry_schedule=(1.0, 1.0, 1.0), shutdown_grace=0.5)
    jobs = [f"backlog{n}" for n in range(20)]
    records = await Records.open(services.js, services.settings)

    async def deferred_often() -> bool:  # one job's delivery deferred as often as it may be attempted
        deferred = Counter(r.job for r in await records.of_job(services.js, "*") if r.outcome == "deferred")
        return max(deferred.values(), default=0) >= notify.attempts(services.settings)

    async with receiver(hang={"/slow"}) as slow, receiver() as fast, notifying(services):
        for job in jobs:
            await ready_job(services, job, slow.url("/slow"))
        await ready_job(services, "fast", fast.url("/fast"))
        await eventually(_delivered(services, "fast"), timeout=15)
        await eventually(deferred_often, timeout=30, every=0.5)
        slow.hang.clear()
        slow.released.set()
        await eventually(lambda: _when(records.of_job(services.js, "*"), lambda rs: sum(
            r.outcome == "delivered" for r in rs) == len(jobs) + 1), timeout=30, every=0.5)
    every = await records.of_job(services.js, "*")
    found = {job: [r for r in every if r.job == job] for job in jobs}
    assert all(rs[-1].outcome == "delivered" and "dead" not in [r.outcome for r in rs] for rs in found.values())
    deferred = [r for rs in found.values() for r in rs if r.outcome == "deferred"]
    assert all(r.error and r.error.startswith("not attempted: 4 deliveries to 127.0.0.1:") for r in deferred)
    assert {r.headers["webhook-id"] for r in slow.got} == {f"{job}:ready" for job in jobs}
    assert not await letters(services)


async def test_unsafe_callbacks_are_refused_without_a_connection(services: Services) -> None:
    services.settings = services.settings.replace(webhook_allow_networks=())
    port = free_port()
    connections: list[str] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(str(writer.get_extra_info("sockname")))
        writer.close()

    listeners = [await asyncio.start_server(count, "127.0.0.1", port)]
    v6 = _has_ipv6_loopback()
    if v6:
        listeners.append(await asyncio.start_server(count, "::1", port))
    urls = {"metadata": "http://169.254.169.254/latest/meta-data/", "private": "http://10.0.0.1/hook",
            "v6-loopback": f"http://[::1]:{port}/hook", "localhost": f"http://localhost:{port}/hook"}
    try:
        async with notifying(services):
            for job, url in urls.items():
                await ready_job(services, job, url)
            found = await eventually(lambda: _when(letters(services), lambda f: len(f) == len(urls)), timeout=30)
    finally:
        for listener in listeners:
            listener.close()
    assert connections == []
    reasons = {letter.data.error.split(" ")[3]: letter.data for letter in found}  # "... (job NAME) ..."
    assert set(reasons) == {f"{job})" for job in urls}
    assert "link-local (cloud metadata)" in reasons["metadata)"].error
    assert "10.0.0.1 is a private address" in reasons["private)"].error
    assert "::1 is a loopback address" in reasons["v6-loopback)"].error
    assert "localhost resolves to 127.0.0.1, which is a loopback address" in reasons["localhost)"].error \
        or "localhost resolves to ::1" in reasons["localhost)"].error
    assert all(letter.permanent and letter.error_class == "WebhookRefused" for letter in reasons.values())
    for job in urls:
        assert await attempts(services, job) == ["refused"]  # one attempt, no retries


async def test_kill_9_mid_delivery_delivers_every_event_with_the_same_id(services: Services) -> None:
    """A worker process killed while receivers hold its requests: a new one sends them again
    after JETMEDIA_WEBHOOK_TIMEOUT + JETMEDIA_ACK_WAIT, with the same webhook-id."""
    settings = services.settings = services.settings.replace(webhook_timeout=4.0)  # none times out before the kill
    async with receiver(hang={"/a", "/b", "/c"}) as hooks:
        worker = worker_process(settings, "notify")
        try:
            await notify.ensure_layout(services.js, settings)
            events = [await ready_job(services, job, hooks.url(f"/{job}")) for job in ("a", "b", "c")]
            await eventually(lambda: _async(len(hooks.got) == 3), timeout=60)  # all three in flight
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
            hooks.hang.clear()
            again = worker_process(settings, "notify")
            try:
                await eventually(lambda: _async(len(hooks.got) >= 6), timeout=60)
                for job in ("a", "b", "c"):
                    await eventually(_delivered(services, job))
            finally:
                again.send_signal(signal.SIGTERM)
                again.wait(30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    ids = defaultdict(set)
    for got in hooks.got:
        assert got.verified
        ids[got.path].add(got.headers["webhook-id"])
    assert {path: sorted(found) for path, found in ids.items()} == {f"/{e.subject}": [e.id] for e in events}
    sent = Counter(r.path for r in hooks.got)
    assert set(sent) == {"/a", "/b", "/c"} and min(sent.values()) >= 2  # the first attempt and at least one more


async def test_unusable_webhook_settings_stop_the_worker_with_exit_2(services: Services) -> None:
    bad = services.settings.replace(webhooks='[{"url": "https://shop.example/h", "secret": "not-whsec"}]')
    worker = worker_process(bad, "notify")
    try:
        out, _ = await asyncio.to_thread(worker.communicate, timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 2, out[-2000:]
    assert b"JETMEDIA_WEBHOOKS: subscription sub-" in out and b"starts with 'whsec_'" in out
    assert b"not-whsec" not in out  # a secret, even a wrong one, is not printed


def _counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("jetmedia_webhook_deliveries_total", {"outcome": outcome}) or 0.0


def _final(services: Services, job: str) -> Callable[[], Awaitable[Job]]:
    async def probe() -> Job:
        return await final_job(services, job)  # type: ignore[no-any-return]
    return probe


def _delivered(services: Services, job: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return "delivered" in await attempts(services, job)
    return probe


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


async def _async(value: bool) -> bool:
    return value


async def _when(probe, ok):  # type: ignore[no-untyped-def]
    value = await probe
    return value if ok(value) else None
