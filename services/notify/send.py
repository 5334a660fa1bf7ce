"""One webhook attempt: POST the body to the checked addresses, keep what the answer says.

aiohttp (already here through aioboto3) rather than httpx: its connector takes a resolver, so the
connection goes to exactly the addresses safety.check() approved while the URL, the Host header
and the TLS server name stay the receiver's own. No redirects are followed (a 3xx is an answer
like any other non-2xx, retried), no proxy from the environment is used, connect and total time
are bounded, and at most `KEEP` bytes of the answer are read.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from . import safety

KEEP = 1024  # bytes of a receiver's answer kept in the delivery record


@dataclass(frozen=True)
class Answer:
    status: int | None  # HTTP status; None when there was none (refused, unreachable, timed out)
    seconds: float
    error: str | None = None
    body: str = ""  # the first KEEP bytes of the answer, as text
    refused: bool = False  # the URL may not be called (safety): no connection was made


class _Checked(AbstractResolver):
    """Answers every lookup with the addresses already checked (no second DNS query)."""

    def __init__(self, checked: safety.Checked) -> None:
        self.checked = checked

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=self.checked.host, host=str(address), port=port or self.checked.port,
                          family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                          proto=0, flags=socket.AI_NUMERICHOST)
            for address in self.checked.addresses
        ]

    async def close(self) -> None:
        return None


async def post(url: str, body: bytes, headers: dict[str, str], *, allowed: tuple[safety.Network, ...],
               connect_timeout: float, timeout: float) -> Answer:
    """One attempt; never raises for what the receiver or the network does."""
    started = time.perf_counter()
    try:
        checked = await safety.check(url, allowed)
    except safety.Unsafe as exc:
        return Answer(None, time.perf_counter() - started, f"refused: {exc}", refused=True)
    except safety.Unresolved as exc:
        return Answer(None, time.perf_counter() - started, str(exc))
    connector = aiohttp.TCPConnector(resolver=_Checked(checked), use_dns_cache=False, force_close=True)
    limits = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout, sock_connect=connect_timeout)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=limits, trust_env=False,
                                         auto_decompress=False) as session:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                kept = await response.content.read(KEEP)
                return Answer(response.status, time.perf_counter() - started,
                              None if 200 <= response.status < 300 else f"HTTP {response.status}",
                              kept.decode("utf-8", errors="replace"))
    except TimeoutError:
        return Answer(None, time.perf_counter() - started, f"no answer within {timeout:g} s")
    except aiohttp.ClientError as exc:
        return Answer(None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:500])
    except OSError as exc:
        return Answer(None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:500])
