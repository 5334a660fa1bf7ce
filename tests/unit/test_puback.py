"""The runtime writes its hot-path messages itself (shared/puback.py) and observes its per-message
histograms through `metrics.observer`: the bytes and the histogram series must be exactly what
nats-py and prometheus_client produce for the same call."""

from __future__ import annotations

import math

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, Histogram

from shared import metrics, puback


async def nats_py_writes(subject: str, reply: str, payload: bytes, headers: dict[str, str] | None) -> bytes:
    """What nats-py's publish path hands to the connection for this message."""
    nc = NATS()
    written: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        written.append(cmd)

    nc._send_command = capture  # type: ignore[method-assign]
    nc._flush_queue = None
    await nc._send_publish(subject, reply, payload, len(payload), headers)
    assert len(written) == 1
    return written[0]


@pytest.mark.parametrize("payload", [b"", b'{"id":"j1:variant"}', bytes(range(256)) * 40])
@pytest.mark.parametrize("msg_id", ["j1:variant", "j1:variant:a1#2", "x" * 300])
async def test_hpub_is_what_nats_py_writes(payload: bytes, msg_id: str) -> None:
    subject, reply = "jetmedia.finalize.asset.bulk", "_INBOX.abc123.17"
    expected = await nats_py_writes(subject, reply, payload, {"Nats-Msg-Id": msg_id})
    assert puback.hpub(subject.encode(), reply.encode(), msg_id.encode(), payload) == expected


async def test_ack_is_what_nats_py_writes() -> None:
    reply = "$JS.ACK.JM_VARIANT.variant.1.2.3.1764460000123456789.0"
    assert puback.ack_command(reply.encode()) == await nats_py_writes(reply, "", b"", None)


def test_observer_fills_the_series_observe_fills() -> None:
    buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    plain = Histogram("h", "h", ["stage"], buckets=buckets, registry=CollectorRegistry())
    fast = Histogram("h", "h", ["stage"], buckets=buckets, registry=CollectorRegistry())
    observe = metrics.observer(fast.labels("s"))
    assert observe != fast.labels("s").observe  # the fast path, not the fallback
    values = [0.0, 0.004, 0.005, 0.0051, 0.01, 0.3, 1.0, 2.5, 9.99, 10.0, 10.01, 1e9, math.inf, -1.0, math.nan]
    for value in values:
        plain.labels("s").observe(value)
        observe(value)

    def samples(h: Histogram) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for family in h.collect() for s in family.samples
                if not s.name.endswith("_created")]

    got, want = samples(fast), samples(plain)
    assert [(n, lbl) for n, lbl, _ in got] == [(n, lbl) for n, lbl, _ in want]
    for (_, _, a), (_, _, b) in zip(got, want, strict=True):
        assert a == b or (math.isnan(a) and math.isnan(b))


def test_observer_falls_back_for_what_it_does_not_know() -> None:
    class Other:
        def observe(self, amount: float) -> None:
            pass

    other = Other()
    assert metrics.observer(other) == other.observe
