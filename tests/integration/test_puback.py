"""The runtime's publisher (shared/puback.py) against the real server: it writes the next message
itself and takes PubAcks where nats-py's read loop hands them over, so what the server stores,
deduplicates, refuses and counts as acknowledged is checked here, not assumed."""

from __future__ import annotations

import nats.errors
import pytest
from nats.aio.msg import Msg

from shared import bus
from shared import messages as m
from shared.runtime import Services

pytestmark = pytest.mark.asyncio


async def stored(services: Services, seq: int) -> Msg:
    return await services.js.get_msg("JM_EVENTS", seq)  # type: ignore[return-value]


async def test_stored_once_with_its_id_then_dropped_as_duplicate(services: Services) -> None:
    publisher = services.publisher
    assert publisher.started and publisher._fast  # the direct path, not nats-py's fallback
    payload = b'{"hello":"world"}'
    assert await publisher.publish(m.EVENTS_REJECTED, payload, "pb-1:x#2") is True
    assert await publisher.publish(m.EVENTS_REJECTED, payload, "pb-1:x#2") is False  # the duplicate window
    assert await publisher.publish(m.EVENTS_REJECTED, b"", "pb-2") is True
    info = await services.js.stream_info("JM_EVENTS")
    assert info.state.messages == 2
    first, second = await stored(services, 1), await stored(services, 2)
    assert (first.subject, first.data, first.headers) == (m.EVENTS_REJECTED, payload, {bus.MSG_ID: "pb-1:x#2"})
    assert (second.data or b"", (second.headers or {}).get(bus.MSG_ID)) == (b"", "pb-2")


async def test_an_id_nats_py_would_rewrite_goes_through_nats_py(services: Services) -> None:
    assert await services.publisher.publish(m.EVENTS_REJECTED, b"{}", "pb-3\r\nX-Evil: 1") is True
    got = await stored(services, 1)
    assert got.headers == {bus.MSG_ID: "pb-3  X-Evil: 1"}  # nats-py's answer: newlines become spaces


async def test_no_stream_is_no_responders(services: Services) -> None:
    with pytest.raises(nats.errors.NoRespondersError):
        await services.publisher.publish("jetmedia.nowhere.at.all", b"{}", "pb-4", timeout=5)


async def test_ack_is_counted_by_the_server_once(services: Services) -> None:
    await services.publisher.publish(m.EVENTS_REJECTED, b"{}", "pb-5")
    sub = await services.js.pull_subscribe(m.EVENTS_REJECTED, durable="pb-ack", stream="JM_EVENTS")
    [msg] = await sub.fetch(1, timeout=5)
    assert (await services.js.consumer_info("JM_EVENTS", "pb-ack")).num_ack_pending == 1
    await services.publisher.ack(msg)
    with pytest.raises(nats.errors.MsgAlreadyAckdError):
        await services.publisher.ack(msg)  # as msg.ack() answers a second ack
    await services.nc.flush()
    info = await services.js.consumer_info("JM_EVENTS", "pb-ack")
    assert (info.num_ack_pending, info.num_pending, info.ack_floor.stream_seq) == (0, 0, 1)
    await sub.unsubscribe()
