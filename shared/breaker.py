"""Circuit breakers on the dependencies (S3, NATS): an outage of the infrastructure is not the job's fault.

Retrying a message on the normal backoff spends its deliveries on whatever went wrong; when S3
refuses connections for a minute that is the outage, not the job, and a whole batch ends in the
DLQ ("gave up after 5 deliveries: Could not connect to the endpoint URL"). So, per process and per
dependency, a breaker:

- opens when a handler fails because the dependency cannot be reached (`dependency_down`);
- probes it with backoff (S3: `head_bucket` on a one-attempt client; NATS: JetStream account info);
  the first failed probe *confirms* the outage: `jetmedia_dependency_up{dependency}` goes to 0;
- closes on the first probe that gets an answer (any answer: a 403 is S3 talking).

While a breaker is open the worker pulls no new messages, and a handler that failed this way
waits: its message stays in flight (heartbeated, so the server neither redelivers it nor counts a
delivery) and the handler runs again when the breaker closes. Only a *confirmed* outage earns that
re-run: when the very first probe already succeeds, the error was not an outage (a 5xx caused by
this one input, say) and takes the ordinary retry path, so no input can loop forever here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aioboto3
import aiohttp
import botocore.exceptions
import nats.errors
import nats.js.errors
from botocore.config import Config
from nats.aio.client import Client as NatsClient

from . import bus, metrics
from .config import Settings

log = logging.getLogger("jetmedia.breaker")

S3 = "s3"
NATS = "nats"
DEPENDENCIES = (S3, NATS)
Probe = Callable[[], Awaitable[None]]

# Errors that mean "could not talk to it", as opposed to "it answered no".
_S3_DOWN: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ...
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ...
    aiohttp.ClientConnectionError,  # a streamed body cut off mid-read
    aiohttp.ClientPayloadError,
)
_NATS_DOWN: tuple[type[BaseException], ...] = (
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
)


def dependency_down(exc: BaseException) -> str | None:
    """Which dependency `exc` says is unreachable (following `raise ... from` chains), or None."""
    for link in _chain(exc):
        if isinstance(link, _S3_DOWN):
            return S3
        if isinstance(link, _NATS_DOWN):
            return NATS
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@dataclass
class Outage:
    """One opening of a breaker: closed when a probe succeeds; `confirmed` once a probe failed."""

    closed: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed: bool = False
    started: float = field(default_factory=time.monotonic)


class Breaker:
    """One dependency of one process."""

    def __init__(self, name: str, probe: Probe, *, first_wait: float = 0.25, max_wait: float = 5.0,
                 probe_timeout: float = 10.0) -> None:
        self.name = name
        self.probe = probe
        self.first_wait = first_wait
        self.max_wait = max_wait
        self.probe_timeout = probe_timeout
        self.outage: Outage | None = None
        self._prober: asyncio.Task[None] | None = None
        metrics.dependency_up.labels(name).set(1)

    @property
    def is_open(self) -> bool:
        return self.outage is not None

    def trip(self, reason: BaseException | str) -> Outage:
        """A call failed to reach the dependency: open (if closed) and start probing."""
        if self.outage is None:
            log.warning("%s unreachable (%s); pausing work and probing", self.name, reason)
            self.outage = Outage()
            self._prober = asyncio.create_task(self._probe_until_up(self.outage), name=f"probe-{self.name}")
        return self.outage

    async def _probe_until_up(self, outage: Outage) -> None:
        wait = self.first_wait
        try:
            while True:
                try:
                    await asyncio.wait_for(self.probe(), self.probe_timeout)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not outage.confirmed:
                        outage.confirmed = True
                        metrics.dependency_up.labels(self.name).set(0)
                    log.info("%s still unreachable (%s); next probe in %.1fs", self.name,
                             str(exc) or type(exc).__name__, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.max_wait)
        finally:
            self.outage = None
            outage.closed.set()
            metrics.dependency_up.labels(self.name).set(1)
        if outage.confirmed:
            log.warning("%s answers again after %.1fs; resuming", self.name, time.monotonic() - outage.started)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(BaseException):
                await self._prober


class Breakers:
    """The breakers of one process, by dependency name."""

    def __init__(self, probes: dict[str, Probe], **options: float) -> None:
        self.by_name = {name: Breaker(name, probe, **options) for name, probe in probes.items()}

    def trip(self, name: str, reason: BaseException | str) -> None:
        """The caller saw `name` unreachable outside a handler (the pull loop, disconnected)."""
        if name in self.by_name:
            self.by_name[name].trip(reason)

    def open(self) -> list[Breaker]:
        return [b for b in self.by_name.values() if b.is_open]

    async def wait_closed(self, stopping: asyncio.Event, timeout: float = 1.0) -> bool:
        """True when every breaker is closed; else waits up to `timeout` for that (or `stopping`)."""
        outages = [b.outage for b in self.by_name.values() if b.outage is not None]
        if not outages:
            return True
        waits = [asyncio.ensure_future(o.closed.wait()) for o in outages]
        waits.append(asyncio.ensure_future(stopping.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return not self.open()

    async def recovered(self, exc: BaseException, stopping: asyncio.Event) -> bool | None:
        """After a handler failed with `exc`: None when it is not an outage (handle it as usual);
        else wait until the dependency answers again. True: it was down and is back, run the
        handler again; False: `stopping` came first (hand the message back)."""
        name = dependency_down(exc)
        breaker = self.by_name.get(name) if name else None
        if breaker is None:
            return None
        outage = breaker.trip(exc)
        closed = asyncio.ensure_future(outage.closed.wait())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait([closed, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            stop.cancel()
        if not outage.closed.is_set():
            return False
        return True if outage.confirmed else None

    async def close(self) -> None:
        for breaker in self.by_name.values():
            await breaker.close()


def s3_probe(settings: Settings) -> Probe:
    """`head_bucket` on a client of its own that tries once (the stages' client retries for
    seconds); any answer, even 403 or 404, means S3 is reachable."""
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=5,
                    s3={"addressing_style": "path"})

    async def probe() -> None:
        async with aioboto3.Session().client(
            "s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key, aws_secret_access_key=settings.s3_secret_key, config=config,
        ) as client:
            with contextlib.suppress(botocore.exceptions.ClientError):
                await client.head_bucket(Bucket=settings.bucket)

    return probe


def nats_probe(nc: NatsClient) -> Probe:
    """A round trip through the server to JetStream (the meta leader answers account info);
    not `nc.flush`, which a stalled server turns into a deaf connection (see bus.round_trip)."""
    async def probe() -> None:
        await bus.round_trip(nc, 3)

    return probe
