"""One webhook attempt: POST the body to the checked addresses, keep what the answer says.

aiohttp (already here through aioboto3) rather than httpx: its connector takes a resolver, so the
connection goes to exactly the addresses safety.check() approved while the URL, the Host header
and the TLS server name stay the receiver's own. No redirects are followed (a 3xx is an answer
like any other non-2xx, retried), no proxy from the environment is used, connect and total time
are bounded (resolving too), and at most `KEEP` bytes of the answer are read.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from shared import __version__
from shared.messages import url_shown as shown

from . import safety

KEEP = 1024  # bytes of a receiver's answer kept in the delivery record


@dataclass(frozen=True)
class Answer:
    status: int | None  # HTTP status; None when there was none (refused, unreachable, timed out)
    seconds: float
    error: str | None = None
    body: str = ""  # the first KEEP bytes of the answer, as text
    refused: bool = False  # the URL may not be called (safety): no connection was made
    retry_after: float | None = None  # seconds a 429 or 503 asked us to wait (Retry-After)
    deferred: bool = False  # not attempted: too many of the receiver's deliveries in hand already


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


# who calls, for the receiver's logs and allow-lists: not aiohttp's default, which names the
# Python and aiohttp versions (what an attacker looks up first)
USER_AGENT = f"jetmedia-webhooks/{__version__} (+https://www.standardwebhooks.com/)"


async def post(url: str, body: bytes, headers: dict[str, str], *, allowed: tuple[safety.Network, ...],
               connect_timeout: float, timeout: float) -> Answer:
    """One attempt; never raises for what the receiver or the network does."""
    started = time.perf_counter()
    try:  # resolving is part of the attempt: a DNS server that never answers must not hold the slot
        checked = await asyncio.wait_for(safety.check(url, allowed), timeout)
    except safety.Unsafe as exc:
        return Answer(None, time.perf_counter() - started, f"refused: {exc}", refused=True)
    except safety.Unresolved as exc:
        return Answer(None, time.perf_counter() - started, str(exc))
    except TimeoutError:
        return Answer(None, time.perf_counter() - started, f"the host did not resolve within {timeout:g} s")
    connector = aiohttp.TCPConnector(resolver=_Checked(checked), use_dns_cache=False, force_close=True)
    left = max(timeout - (time.perf_counter() - started), 0.1)
    limits = aiohttp.ClientTimeout(total=left, connect=connect_timeout, sock_connect=connect_timeout)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=limits, trust_env=False,
                                         auto_decompress=False, headers={"User-Agent": USER_AGENT}) as session:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                kept = await _kept(response)
                wait = _retry_after(response)
                return Answer(response.status, time.perf_counter() - started, _status_error(response, wait),
                              kept.decode("utf-8", errors="replace"), retry_after=wait)
    except TimeoutError:
        return Answer(None, time.perf_counter() - started, f"no answer within {timeout:g} s")
    except aiohttp.ClientConnectorCertificateError as exc:  # what to fix on the receiver, in words
        why = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        return Answer(None, time.perf_counter() - started, f"the receiver's TLS certificate is not trusted: {why}")
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: a header aiohttp will not send
        return Answer(None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:500])


async def _kept(response: aiohttp.ClientResponse) -> bytes:
    """The first KEEP bytes of the answer, or what came of them before the time ran out: a
    receiver that sent its status and then stalls the body has answered (a 2xx is delivered,
    not sent again)."""
    try:
        return await response.content.read(KEEP)
    except (TimeoutError, aiohttp.ClientError):
        return b""


def _status_error(response: aiohttp.ClientResponse, retry_after: float | None) -> str | None:
    """A non-2xx status in words: a redirect names where it pointed (it is not followed), a 429
    or 503 how long it asked us to wait."""
    if 200 <= response.status < 300:
        return None
    location = response.headers.get("Location")
    if 300 <= response.status < 400 and location:
        return f"HTTP {response.status}: a redirect to {shown(location)[:200]}, not followed"
    if retry_after is not None:
        return f"HTTP {response.status}: asked to retry after {retry_after:.0f} s"
    return f"HTTP {response.status}"


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """Retry-After of a 429 or 503, in seconds from now (delay-seconds or an HTTP-date)."""
    value = response.headers.get("Retry-After", "").strip()
    if response.status not in (429, 503) or not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)
