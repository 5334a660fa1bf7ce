"""NATS out of reach: the gateway answers 503 problems (worth retrying) and /healthz says so, then
serves again once NATS is back, without a restart."""

from __future__ import annotations

from shared.runtime import Services
from tests.faults.test_outage import Proxy
from tests.gatewaykit import gateway
from tests.helpers import eventually


async def test_a_nats_outage_is_a_503_then_the_gateway_recovers(services: Services) -> None:
    proxy = Proxy(services.settings.nats_url.replace("nats://", "http://"))
    await proxy.start()
    via_proxy = services.settings.replace(nats_url=f"nats://127.0.0.1:{proxy.port}")
    try:
        async with gateway(via_proxy) as gw, gw.client("web", timeout=60) as http:
            assert (await http.get("/v1/jobs/some-job")).status_code == 404
            await proxy.refuse()

            async def unhealthy() -> bool:
                return (await http.get("/healthz")).status_code == 503

            await eventually(unhealthy, timeout=20)
            assert (await http.get("/healthz")).json()["nats"] is False
            down = await http.get("/v1/jobs/some-job")
            assert down.status_code == 503, down.text
            assert down.headers["content-type"].startswith("application/problem+json")
            assert down.json()["type"] == "urn:jetmedia:problem:unavailable" and down.headers["Retry-After"]

            await proxy.start()

            async def serving() -> bool:
                return (await http.get("/v1/jobs/some-job")).status_code == 404

            await eventually(serving, timeout=30, every=0.5)
            assert (await http.get("/healthz")).json() == {"status": "ok", "nats": True, "version": "0.1.0"}
    finally:
        await proxy.stop()
