"""HTTP metrics for the gateway (`jetmedia_http_*`), by route template, never by raw path:
job ids in labels would grow the series without bound.

The wrapper sits outside the framework so refusals before routing (404, 413) are counted too;
the route template is what Litestar's router wrote into the scope (`unmatched` when none). It also
writes the access log line itself: path only, never the query string (it may carry a token).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("jetmedia.gateway.access")

requests_total = Counter("jetmedia_http_requests", "HTTP requests answered, by route template, method and status.",
                         ["route", "method", "status"])
request_seconds = Histogram(
    "jetmedia_http_request_duration_seconds", "Time to answer an HTTP request (SSE: the stream's lifetime).",
    ["route", "method"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
)
sse_clients = Gauge("jetmedia_http_sse_clients", "Server-Sent Events streams open now.")
in_progress = Gauge("jetmedia_http_requests_in_progress", "HTTP requests being answered now.")


class Instrumented:
    """ASGI wrapper: counts and times every HTTP request of `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        in_progress.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            in_progress.dec()
            route = str(scope.get("path_template") or "unmatched")
            method = scope.get("method", "")
            elapsed = time.perf_counter() - started
            requests_total.labels(route, method, str(status)).inc()
            request_seconds.labels(route, method).observe(elapsed)
            log.debug("%s %s %d %.1f ms", method, scope.get("path", ""), status, elapsed * 1000)
