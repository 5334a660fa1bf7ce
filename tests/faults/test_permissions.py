"""NATS users on the embedded server (shared/natsauth.py): a producer submits and watches, nothing more.

Before, anyone who could publish `jetmedia.upload.>` could publish to the stages' subjects: a forged
`jetmedia.variant` message naming a real job failed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from services import samples, stages
from shared import bus, natsauth
from shared import messages as m
from shared.config import Settings
from shared.devstack import EmbeddedStack, free_port, nats_server_binary
from shared.jobs import BUCKET, decode_job, new_job
from shared.natsauth import PRODUCER_USER
from shared.runtime import Services
from tests.helpers import asset_event, eventually, running, stream_events


@contextlib.asynccontextmanager
async def producer(stack: EmbeddedStack, settings: Settings) -> AsyncIterator[tuple[NATS, list[str]]]:
    """A connection as the producer user; the server's complaints (permission violations) listed."""
    assert stack.nats and stack.nats.passwords
    nc = NATS()
    complaints: list[str] = []

    async def on_error(exc: Exception) -> None:
        complaints.append(str(exc))

    await nc.connect(settings.nats_url, user=PRODUCER_USER, password=stack.nats.passwords[PRODUCER_USER],
                     error_cb=on_error, max_reconnect_attempts=1, connect_timeout=3)
    try:
        yield nc, complaints
    finally:
        await nc.close()


def forged_variant(job: str) -> m.VariantRequested:
    return m.VariantRequested(id=f"forged-{job}", subject=job, time=m.now(),
                              data=m.VariantRequestedData(job=job, asset=job, bucket="nope", key="missing"))


async def test_producer_is_refused_on_internal_subjects_and_cannot_fail_a_real_job(
    services: Services, stack: EmbeddedStack
) -> None:
    await services.jobs.create(new_job("victim0", "asset", status="running"))
    async with producer(stack, services.settings) as (nc, complaints):
        js = nc.jetstream(timeout=1.0)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await bus.publish(js, m.VARIANT, forged_variant("victim0"), timeout=1.0)
        kv = await js.key_value(BUCKET)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await kv.put("victim0", b"{}")  # job records are the stages' to write
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.delete_stream("JM_VARIANT")
        await nc.flush()
        await eventually(lambda: _true(len(complaints) >= 3))

    said = [c.lower() for c in complaints]  # nats-py lowercases the server's -ERR text
    assert any('permissions violation for publish to "jetmedia.variant"' in c for c in said), complaints
    assert any('publish to "$kv.jetmedia-jobs.victim0"' in c for c in said), complaints
    assert (await services.js.stream_info("JM_VARIANT")).state.messages == 0
    async with running(services, stages.load_all()):
        await asyncio.sleep(0.5)
    job = await services.jobs.get("victim0")
    assert job is not None and job.status == "running"


async def test_producer_submits_watches_and_reads_events_end_to_end(services: Services, stack: EmbeddedStack) -> None:
    await services.storage.put_bytes("uploads/perm.jpg", samples.photo(320, 240))
    async with running(services, stages.load_all()), producer(stack, services.settings) as (nc, complaints):
        js = nc.jetstream()
        kv = await js.key_value(BUCKET)
        watcher = await kv.watch("perm-1")
        assert await bus.publish(js, m.UPLOAD_ASSET, asset_event("uploads/perm.jpg", event_id="perm-1"))

        async def watched_until_final() -> str:
            async for entry in watcher:
                if entry is not None and entry.value:
                    job = decode_job(entry.value)
                    if job.final:
                        return job.status
            return "watch ended"

        assert await asyncio.wait_for(watched_until_final(), 30) == "ready"
        await watcher.stop()
        got = await kv.get("perm-1")  # a plain read too
        assert got.value and decode_job(got.value).status == "ready"
        events = await bus.read_stream(js, "JM_EVENTS")
        assert [e.data.job for e in events if isinstance(e, m.AssetReady)] == ["perm-1"]
        await nc.flush()
    assert complaints == []
    assert await stream_events(services, "JM_DLQ") == []


async def _true(value: bool) -> bool:
    return value


def test_compose_nats_config_is_the_rendered_one_and_a_real_server_takes_it(tmp_path: Path) -> None:
    """deploy/nats-auth.conf (mounted by compose) = natsauth's rendering, and nats-server runs it
    with the passwords from its environment: both users log in, the producer is still confined."""
    conf = Path(__file__).resolve().parents[2] / "deploy" / "nats-auth.conf"
    assert conf.read_text() == natsauth.compose_config(), "run `python -m shared.natsauth`"
    passwords = {natsauth.SERVICE_USER: "svc-pw", natsauth.PRODUCER_USER: "prod-pw"}
    env = {**os.environ, **{natsauth.PASSWORD_VARIABLES[u]: pw for u, pw in passwords.items()}}
    port = free_port()
    proc = subprocess.Popen([nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(_log_in_as_each(port, passwords))
    finally:
        proc.terminate()
        proc.wait(10)


async def _log_in_as_each(port: int, passwords: dict[str, str]) -> None:
    for user, password in passwords.items():
        complaints: list[str] = []

        async def on_error(exc: Exception, said: list[str] = complaints) -> None:
            said.append(str(exc).lower())

        nc = NATS()
        for _attempt in range(50):  # the server is starting
            try:
                await nc.connect(f"nats://127.0.0.1:{port}", user=user, password=password, error_cb=on_error,
                                 allow_reconnect=False, connect_timeout=1)
                break
            except Exception:
                await asyncio.sleep(0.1)
        assert nc.is_connected, user
        await nc.publish(m.VARIANT, b"{}")
        await nc.flush()
        await asyncio.sleep(0.2)
        await nc.close()
        refused = any("permissions violation" in c for c in complaints)
        assert refused == (user == natsauth.PRODUCER_USER), (user, complaints)


async def test_the_cli_submits_with_producer_credentials(services: Services, stack: EmbeddedStack,
                                                         tmp_path: Path) -> None:
    """A producer's `jetmedia submit` finds the layout made by the stages and does not try to
    create it (which its user may not do: it used to wait out the start-up retries, ~60 s)."""
    assert stack.nats and stack.nats.passwords
    photo = tmp_path / "p.jpg"
    photo.write_bytes(samples.photo(320, 240))
    env = {**os.environ, **services.settings.as_env(), "JETMEDIA_NATS_USER": PRODUCER_USER,
           "JETMEDIA_NATS_PASSWORD": stack.nats.passwords[PRODUCER_USER], "JETMEDIA_CONNECT_TIMEOUT": "3"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.cli", "submit", str(photo), "--job-id", "by-producer"],
        env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    info = await services.js.stream_info("JM_UPLOAD")  # no stage runs here: the event waits in its stream
    assert info.state.messages == 1
