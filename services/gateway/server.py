"""Running the gateway: connections first, then uvicorn on JETMEDIA_GATEWAY_HOST:PORT.

`serve()` runs until `stopping` is set, in whatever event loop calls it: `jetmedia gateway` alone,
`jetmedia up` beside the stages, or a test. Signals stay with the caller (uvicorn's own handlers
are not installed), and open SSE streams are ended when stopping, so shutdown does not wait on
clients that never hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Generator

import uvicorn
from botocore.exceptions import ClientError

from shared import metrics
from shared.config import ConfigError, Settings
from shared.runtime import Services
from shared.storage import Storage

from . import auth
from .app import Gateway, create_app
from .feed import JobFeed
from .httpmetrics import Instrumented
from .limits import GatewayState
from .slowclients import TimedH11Protocol

log = logging.getLogger("jetmedia.gateway")
CORS_RULES = {"CORSRules": [{
    "AllowedOrigins": ["*"], "AllowedMethods": ["PUT", "GET", "HEAD"], "AllowedHeaders": ["*"],
    "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 3600,
}]}


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # the caller owns SIGINT/SIGTERM
        yield


async def ensure_bucket_cors(storage: Storage) -> str:
    """Browsers PUT to presigned URLs from the page's origin, which needs CORS on the bucket. A
    bucket with no CORS configuration gets one (any origin: the presigned URL is the credential);
    one that has a configuration is left alone. Returns what was done, for the log."""
    try:
        await storage.client.get_bucket_cors(Bucket=storage.bucket)
        return "kept the bucket's CORS configuration"
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchCORSConfiguration", "NoSuchCORS"):
            return f"could not read the bucket's CORS configuration ({exc}); browsers may be refused"
    try:
        await storage.client.put_bucket_cors(Bucket=storage.bucket, CORSConfiguration=CORS_RULES)
    except ClientError as exc:
        return f"could not set CORS on the bucket ({exc}); browser uploads may be refused"
    return "set CORS on the bucket (PUT/GET/HEAD from any origin)"


async def serve(settings: Settings, stopping: asyncio.Event, *, on_ready: Callable[[str], None] | None = None,
                tokens: dict[str, auth.Principal] | None = None) -> None:
    """Serve the API until `stopping`; `on_ready(url)` once it listens (the bound port)."""
    tokens = auth.load_tokens(settings) if tokens is None else tokens
    if not tokens:
        raise ConfigError("the gateway has no tokens: set JETMEDIA_GATEWAY_TOKENS "
                          "(`jetmedia gateway token NAME` makes one)")
    async with Services.open(settings, name="jetmedia-gateway") as services:
        await services.storage.ensure_bucket()
        log.info("gateway: %s", await ensure_bucket_cors(services.storage))
        state = await GatewayState.open(services.js, settings)
        metrics.mark_ready(lambda: services.nc.is_connected)  # `jetmedia health --url .../metrics` works here too
        feed = JobFeed(services.nc, services.js)
        await feed.start()
        gateway = Gateway(settings=settings, services=services, state=state, tokens=tokens, feed=feed)
        try:
            config = uvicorn.Config(
                Instrumented(create_app(gateway)), host=settings.gateway_host, port=settings.gateway_port,
                log_level="warning", log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                proxy_headers=False, server_header=False, http=TimedH11Protocol,  # slow clients: slowclients.py
            )
            server = _Server(config)
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    await task
                    where = f"{settings.gateway_host}:{settings.gateway_port}"
                    raise ConfigError(f"the gateway could not listen on {where} (in use? set JETMEDIA_GATEWAY_PORT)")
                await asyncio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            url = f"http://{settings.gateway_host}:{port}"
            if on_ready:
                on_ready(url)
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
        finally:
            await feed.stop()  # ends each SSE stream now (clients reconnect elsewhere)
        stop.cancel()
        await task
    log.info("gateway: stopped")
