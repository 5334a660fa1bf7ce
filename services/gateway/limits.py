"""What the gateway remembers, all in the `jetmedia-gateway` KV bucket so replicas share it.

- `rate.<token>`: a token bucket (tokens left, when) per API token; every request takes one,
  changed by compare-and-set so two replicas never both spend the last token (429 + Retry-After).
- `inflight.<token>`: the jobs a token started that had not ended when last looked at; a submit
  past the token's cap is refused (429, kind `quota-exceeded`). Ended jobs are pruned lazily,
  only when the list is full, so a submit costs one read and one write.
- `req.<job>`: who started a job through the gateway and a hash of the request: a retried POST
  with the same Idempotency-Key finds it (same job, no second message); the same key with a
  different body is a 409; a token with a key prefix sees the jobs it submitted.

Records expire with the bucket's max age (JETMEDIA_EVENTS_MAX_AGE): the job records and events
are the lasting truth.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import bus
from shared.config import Settings
from shared.natsauth import GATEWAY_BUCKET

from .auth import Principal
from .problems import Problem

FORGET_UNSEEN = 600.0  # seconds after which a submitted job that never got a record stops counting


class Bucket(msgspec.Struct, kw_only=True):
    tokens: float
    at: float


class InFlight(msgspec.Struct, kw_only=True):
    jobs: dict[str, float] = {}  # job id -> when submitted (epoch seconds)


class RequestRecord(msgspec.Struct, kw_only=True, frozen=True):
    token: str
    kind: str
    digest: str  # sha256 of the request body (a reused Idempotency-Key must carry the same request)
    at: float
    key: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")  # the request's data (re-published by POST /v1/jobs/{id}/retry)

    @property
    def stored_data(self) -> bytes | None:
        raw = bytes(self.data)
        return None if raw in (b"", b"null") else raw


class GatewayState:
    """Typed compare-and-set access to the gateway's KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}  # token name -> requests wanting a rate token
        self._granting: dict[str, asyncio.Task[None]] = {}  # token name -> the task granting them

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> GatewayState:
        return cls(await bus.kept_bucket(js, GATEWAY_BUCKET, settings))

    async def _read(self, key: str) -> tuple[bytes | None, int | None]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, None
        return (entry.value or None), entry.revision

    async def _write(self, key: str, value: bytes, revision: int | None) -> bool:
        """Compare-and-set: False when someone else wrote first (read again and retry)."""
        try:
            if revision is None:
                await self.kv.create(key, value)
            else:
                await self.kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def take(self, principal: Principal) -> None:
        """One request's token from the principal's bucket, or 429 with Retry-After.

        Requests of one token arriving together on this replica are granted in one batch: one
        compare-and-set for all of them instead of one each (200 EventSource clients connecting
        at once would otherwise fight over the record). Replicas still share the bucket exactly."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(principal.name, []).append(waiter)
        if principal.name not in self._granting:
            self._granting[principal.name] = asyncio.create_task(self._grant(principal))
        await waiter

    async def _grant(self, principal: Principal) -> None:
        try:
            while batch := self._waiting.pop(principal.name, []):
                try:
                    granted, wait = await self._spend(principal, len(batch))
                except Exception as exc:  # NATS trouble: every waiter gets the error (a 503)
                    for waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for i, waiter in enumerate(batch):
                    if waiter.done():
                        continue
                    if i < granted:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(Problem(
                            429, "rate-limited", f"token {principal.name!r} is over {principal.rate:g} requests/s "
                            f"(burst {principal.burst}); retry in {wait:.1f} s",
                            {"Retry-After": str(max(1, math.ceil(wait)))}))
        finally:
            del self._granting[principal.name]

    async def _spend(self, principal: Principal, wanted: int) -> tuple[int, float]:
        """Take up to `wanted` tokens by compare-and-set: (how many were granted, seconds until
        the next one)."""
        key = f"rate.{principal.name}"
        for attempt in range(100):
            raw, revision = await self._read(key)
            now = time.time()
            state = msgspec.json.decode(raw, type=Bucket) if raw else Bucket(tokens=principal.burst, at=now)
            tokens = min(float(principal.burst), state.tokens + max(now - state.at, 0.0) * principal.rate)
            granted = min(wanted, int(tokens))
            left = tokens - granted
            wait = (1.0 - left) / principal.rate if principal.rate > 0 else 60.0
            if granted == 0:
                return 0, wait
            if await self._write(key, msgspec.json.encode(Bucket(tokens=left, at=now)), revision):
                return granted, wait
            await asyncio.sleep(random.uniform(0, min(0.001 * 2 ** attempt, 0.05)))
        raise Problem(503, "busy", "the rate limiter's record is contended; retry", {"Retry-After": "1"})

    async def admit(self, principal: Principal, job_id: str, ended: Callable[[str], Awaitable[bool | None]]) -> None:
        """Count `job_id` against the principal's cap of jobs in flight, or 429 (quota-exceeded).
        `ended(job)`: True when the job's record is final, None when it has no record (yet)."""
        key = f"inflight.{principal.name}"
        for attempt in range(100):
            raw, revision = await self._read(key)
            state = msgspec.json.decode(raw, type=InFlight) if raw else InFlight()
            if job_id in state.jobs:
                return
            now = time.time()
            if len(state.jobs) >= principal.max_in_flight:  # full: drop the jobs that ended (read at once)
                listed = list(state.jobs.items())
                answers = await asyncio.gather(*(ended(job) for job, _ in listed))
                state.jobs = {job: at for (job, at), done in zip(listed, answers, strict=True)
                              if done is False or (done is None and now - at < FORGET_UNSEEN)}
            if len(state.jobs) >= principal.max_in_flight:
                raise Problem(429, "quota-exceeded",
                              f"token {principal.name!r} has {len(state.jobs)} jobs in flight, its cap is "
                              f"{principal.max_in_flight}; wait for one to end", {"Retry-After": "5"})
            state.jobs[job_id] = now
            if await self._write(key, msgspec.json.encode(state), revision):
                return
            await asyncio.sleep(random.uniform(0, min(0.001 * 2 ** attempt, 0.05)))
        raise Problem(503, "busy", "the quota record is contended; retry")

    async def request(self, job_id: str) -> RequestRecord | None:
        raw, _ = await self._read(f"req.{job_id}")
        return msgspec.json.decode(raw, type=RequestRecord) if raw else None

    async def remember(self, job_id: str, record: RequestRecord) -> tuple[RequestRecord, bool]:
        """Store who started the job: (the record kept, whether this call stored it). A record
        there already (a concurrent request won) is returned instead."""
        if await self._write(f"req.{job_id}", msgspec.json.encode(record), None):
            return record, True
        return await self.request(job_id) or record, False
