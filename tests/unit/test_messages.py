from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import messages as m
from shared import schemagen

ROOT = Path(__file__).resolve().parents[2]


def test_a_producer_in_any_language_can_send_minimal_json() -> None:
    payload = json.dumps({
        "specversion": "1.0", "type": "jetmedia.asset.uploaded.v1", "id": "evt-1", "source": "node-app",
        "data": {"key": "uploads/cat.jpg"},
    }).encode()
    event = m.decode(payload)
    assert isinstance(event, m.AssetUploaded)
    assert m.job_of(event) == "evt-1" and event.data.key == "uploads/cat.jpg"


@pytest.mark.parametrize("payload, reason", [
    (b"{", "truncated"),
    (b'{"type": "jetmedia.asset.uploaded.v2", "id": "1", "data": {"key": "k"}}', "Invalid value"),
    (b'{"type": "jetmedia.asset.uploaded.v1", "id": "1", "data": {}}', "missing required field `key`"),
    (b'{"type": "jetmedia.asset.uploaded.v1", "id": "", "data": {"key": "k"}}', "length >= 1"),
])
def test_bad_messages_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(msgspec.MsgspecError, match=re.escape(reason)):
        m.decode(payload)


def test_every_event_round_trips() -> None:
    event = m.PartDone(id="j:variant:a", subject="j", time=m.now(), data=m.PartData(
        job="j", asset="a", part="variant",
        outputs=[m.OutputFile(preset="thumb", key="variants/a/thumb.webp", format="webp", bytes=10, width=4)],
    ))
    assert m.decode(m.encode(event)) == event


@given(st.text(min_size=1, max_size=300))
def test_a_producer_event_id_is_the_job_id_or_the_event_is_refused(candidate: str) -> None:
    """No silent rewriting (issue 12 item 2): the id is kept as sent, or decoding refuses it."""
    payload = msgspec.json.encode({"type": "jetmedia.asset.uploaded.v1", "id": candidate, "data": {"key": "k"}})
    try:
        event = m.decode(payload)
    except msgspec.ValidationError as exc:
        assert not m.is_job_id(candidate)
        assert m.explain(exc).startswith("id: ")
    else:
        assert m.is_job_id(candidate) and m.job_of(event) == candidate


def test_committed_schemas_match_the_code() -> None:
    drift = schemagen.drift(ROOT / "schemas")
    assert drift == [], f"run `jetmedia schemas`: {drift}"


def test_schemas_command_check_mode(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "services.cli", "schemas", "--out", str(tmp_path)]
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 1
    assert subprocess.run(run, capture_output=True).returncode == 0
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 0
    schema = json.loads((tmp_path / "jetmedia.asset.uploaded.v1.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "AssetUploadedData" in schema["$defs"]
    assert (tmp_path / "asyncapi.yaml").read_text().startswith("asyncapi: 3.1.0")
