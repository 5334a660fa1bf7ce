"""Real servers for every test: one nats-server (JetStream) and one S3 endpoint per session,
on free loopback ports, stopped by PID. Each test gets a wiped layout and fresh settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from shared import bus
from shared.config import Settings
from shared.devstack import EmbeddedStack
from shared.jobs import BUCKET
from shared.runtime import Services


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
def settings(stack: EmbeddedStack, tmp_path: Path) -> Settings:
    """Fast timings so fault tests run in seconds; everything else as in production."""
    return Settings.from_env(
        {},
        **{k.removeprefix("JETMEDIA_").lower(): v for k, v in stack.env().items()},
        ack_wait=2.0,
        retry_backoff=(0.2, 0.4, 0.8, 1.6),
        shutdown_grace=5.0,
        metrics_port=0,
        bucket="jetmedia-test",
        data_dir=str(tmp_path),
    )


async def wipe(settings: Settings) -> None:
    nc = await bus.connect(settings, "test-wipe")
    js = nc.jetstream()
    for spec in bus.STREAMS:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(spec.name)
    with contextlib.suppress(Exception):
        await js.delete_key_value(BUCKET)
    await nc.close()


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """A clean JetStream layout and an empty bucket, then the shared services of a process."""
    await wipe(settings)
    async with Services.open(settings, name="test") as opened:
        await opened.storage.ensure_bucket()
        for key in await opened.storage.list_keys(""):
            await opened.storage.delete(key)
        yield opened
