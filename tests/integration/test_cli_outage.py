"""Workers keep reconnecting to NATS forever, but say so once, then once a minute — not twice a
second (nats-py reports every attempt); people's commands give up after the connect timeout."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from shared import bus
from shared.config import Settings
from shared.devstack import NatsServer, free_port
from tests.helpers import eventually


async def _connected(nc: Any) -> bool:
    return bool(nc.is_connected)


def bus_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jetmedia.bus" and r.levelno == logging.WARNING]


async def test_a_worker_logs_an_outage_once_and_its_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = NatsServer(tmp_path / "nats", port=free_port()).start()
    nc = await bus.connect(Settings.from_env({}, nats_url=server.url), "outage-test")
    try:
        caplog.set_level(logging.INFO, logger="jetmedia.bus")
        server.stop()
        await asyncio.sleep(3.0)  # ~6 reconnect attempts, each reported by nats-py
        assert not nc.is_connected
        warnings = bus_warnings(caplog)
        assert len(warnings) == 1 and server.url in warnings[0] and "reconnecting" in warnings[0], warnings

        server = NatsServer(tmp_path / "nats", port=server.port).start()  # same port: the client finds it
        await eventually(lambda: _connected(nc), timeout=15)
        assert any("nats: reconnected after" in r.getMessage() for r in caplog.records), caplog.text
        assert len(bus_warnings(caplog)) == 1
    finally:
        await nc.close()
        server.stop()


def test_a_long_outage_is_repeated_once_a_minute(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]
    monkeypatch.setattr(bus.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="jetmedia.bus")
    outage = bus._Outage()
    for _ in range(600):  # five minutes of reports, two a second
        outage.report("nats: connection refused")
        clock[0] += 0.5
    warnings = bus_warnings(caplog)
    assert len(warnings) == 5, warnings
    assert "still; 119 more reports in 60 s" in warnings[1]
    outage.over()
    assert caplog.records[-1].getMessage() == "nats: reconnected after 300 s"


async def test_a_persons_connect_gives_up_with_the_url_and_cause(caplog: pytest.LogCaptureFixture) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    with pytest.raises(bus.Unreachable, match=rf"cannot reach NATS at {url} within 1 s: connection refused"):
        await bus.connect(Settings.from_env({}, nats_url=url), "person", wait=1.0, quiet=True)
    assert time.monotonic() - started < 1.5
    assert not bus_warnings(caplog)  # quiet: the caller prints the one line


async def test_a_server_stalled_past_a_probes_timeout_is_heard_again_when_it_is_back(tmp_path: Path) -> None:
    """The NATS breaker's probe used `nc.flush(timeout=3)`: a server stalled for longer (a paused
    VM, a long GC, SIGSTOP here) made it time out, and the PONG that came once the server was
    back stopped nats-py's read loop (InvalidStateError): the connection said it was up and
    heard nothing, no PubAck, no message, until the stale-connection check minutes later."""
    import os
    import signal

    import nats.errors

    from shared.breaker import nats_probe

    server = NatsServer(tmp_path / "nats", port=free_port()).start()
    nc = await bus.connect(Settings.from_env({}, nats_url=server.url), "stall-test")
    probe = nats_probe(nc)
    try:
        await probe()
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await bus.round_trip(nc, 1.0)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.5)  # the late answer arrives
        await asyncio.wait_for(probe(), 5)  # timed out before the fix: nothing was read any more
        await bus.round_trip(nc, 5)
        assert nc.is_connected
    finally:
        await nc.close()
        server.stop()
