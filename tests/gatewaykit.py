"""A real gateway for tests: uvicorn on a free 127.0.0.1 port in the test's event loop, talking to
the session's stack, with a set of tokens (one per role) made fresh for each gateway.

    async with gateway(settings) as gw, running(services, stages):
        async with gw.client("web") as http:
            r = await http.post("/v1/uploads", json={"filename": "a.png", "content_type": "image/png"})

Token names get a random suffix, so the rate-limit and quota records (KV, shared by replicas and
kept between tests) of one test never count against another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.gateway import auth, server
from shared.config import Settings

ROLES: dict[str, dict[str, Any]] = {
    "admin": {"scopes": ["admin"]},
    "web": {"scopes": ["submit", "read", "cancel"]},
    "reader": {"scopes": ["read"]},
    "tenant": {"scopes": ["submit", "read", "cancel"], "prefix": "tenant-a/"},
    "hook": {"scopes": ["hook"]},
    "slow": {"scopes": ["read"], "rate": 0.01, "burst": 3},  # one more request per 100 s: no refill mid-test
    "burst": {"scopes": ["read"], "rate": 0.01, "burst": 5},
    "crowd": {"scopes": ["read"], "rate": 1000, "burst": 1000},
    "quota": {"scopes": ["submit", "read"], "max_in_flight": 1},
}


@dataclass
class RunningGateway:
    url: str
    settings: Settings
    tokens: dict[str, str]  # role -> bearer token
    names: dict[str, str] = field(default_factory=dict)  # role -> token name (as in KV keys and logs)

    def headers(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    def client(self, role: str | None = "web", timeout: float = 30.0) -> httpx.AsyncClient:
        """An httpx client on the gateway, authenticated as `role` (None: no token)."""
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(role), timeout=timeout)


def tokens_setting(roles: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, str], dict[str, str]]:
    """JETMEDIA_GATEWAY_TOKENS for these roles, the tokens themselves, and their names."""
    suffix = secrets.token_hex(3)
    tokens = {role: auth.new_token() for role in roles}
    names = {role: f"{role}-{suffix}" for role in roles}
    entries = [{"name": names[role], "sha256": auth.hash_token(tokens[role]), **spec} for role, spec in roles.items()]
    return json.dumps(entries), tokens, names


@contextlib.asynccontextmanager
async def gateway(settings: Settings, roles: Mapping[str, Mapping[str, Any]] = ROLES, *,
                  replica_of: RunningGateway | None = None, **overrides: Any) -> AsyncIterator[RunningGateway]:
    """Serve the gateway until the block ends (settings overrides: gateway_heartbeat=0.5, ...);
    `replica_of`: a second gateway with the same tokens (a replica: limits are shared through KV)."""
    if replica_of is not None:
        setting, tokens, names = replica_of.settings.gateway_tokens, replica_of.tokens, replica_of.names
    else:
        setting, tokens, names = tokens_setting(roles)
    settings = settings.replace(gateway_host="127.0.0.1", gateway_port=0, gateway_tokens=setting, **overrides)
    stopping = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve(settings, stopping, on_ready=ready.set_result))
    try:
        await asyncio.wait([task, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not ready.done():
            if task.done():
                await task
            raise TimeoutError("the gateway did not start within 60 s")
        yield RunningGateway(url=ready.result(), settings=settings, tokens=tokens, names=names)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The events of a text/event-stream response as dicts (`event`, `id`, `data`; a comment as
    `comment`), in order, until the server closes the stream."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value
    if event:
        yield event
