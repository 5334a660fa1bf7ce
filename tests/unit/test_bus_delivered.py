"""bus.delivered reads a JetStream reply subject as nats-py's `msg.metadata` does (the runtime
reads it for every message instead of the slower metadata): both subject forms, and no answer
for what is no JetStream delivery."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from shared import bus

V1 = "$JS.ACK.JM_VARIANT.variant.3.12345.999.1764460000123456789.19999"
V2 = "$JS.ACK.hub.ACCHASH.JM_VARIANT.variant.2.54321.77.1764460000987654321.5.r4nd0m"


@pytest.mark.parametrize("reply", [V1, V2, V2.rsplit(".", 1)[0]])
def test_reads_what_nats_py_metadata_reads(reply: str) -> None:
    meta = Msg(None, reply=reply).metadata  # type: ignore[arg-type]
    got = bus.delivered(reply)
    assert got is not None
    assert got.delivery == meta.num_delivered
    assert got.stream_seq == meta.sequence.stream
    assert abs(got.stored_ns / 1e9 - meta.timestamp.timestamp()) < 1e-5


@pytest.mark.parametrize("reply", [None, "", "_INBOX.abc.1", "$JS.ACK.S.C.x.1.1.1.1", "$JS.ACK.S.C.1.1.1.1",
                                   "$JS.API.S.C.1.1.1.1.1"])
def test_no_delivery_no_answer(reply: str | None) -> None:
    assert bus.delivered(reply) is None


def test_delivery_zero_counts_as_first() -> None:
    got = bus.delivered("$JS.ACK.S.C.0.1.1.1.1")
    assert got is not None and got.delivery == 1
