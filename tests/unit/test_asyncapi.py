"""schemas/asyncapi.yaml describes jetmedia from its own side, and other languages accept it.

The Node check (.ci/asyncapi/check.js: the official @asyncapi/parser, ajv 2020-12 strict over every
schemas/*.json, every example valid, bad job ids refused) runs here and in `make asyncapi`; it is
installed like `make` does (`npm ci`) when it is not yet.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import msgspec
import yaml

from shared import messages as m
from shared import schemagen

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "asyncapi"


def document() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "schemas" / "asyncapi.yaml").read_text())


def test_operations_are_jetmedias_own() -> None:
    doc = document()
    actions: dict[str, set[str]] = {}
    for operation in doc["operations"].values():
        channel = operation["channel"]["$ref"].rsplit("/", 1)[1]
        actions.setdefault(doc["channels"][channel]["address"], set()).add(operation["action"])
    assert actions[m.UPLOAD_ASSET] == actions[m.UPLOAD_EXPORT] == actions[m.UPLOAD_CANCEL] == {"receive"}
    assert actions[m.VARIANT] == actions[m.CHUNK] == {"receive", "send"}
    for address, acts in actions.items():
        if address.startswith(("jetmedia.events.", m.DLQ_PREFIX)):
            assert acts == {"send"}, address
    assert doc["asyncapi"] == "3.1.0"
    assert [s["protocol"] for s in doc["servers"].values()] == ["nats"]


def test_every_channel_parameter_is_declared() -> None:
    for name, channel in document()["channels"].items():
        wanted = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert wanted == set(channel.get("parameters", {})), name
    assert document()["channels"]["deadLetters"]["parameters"]["stage"]["enum"] == [
        "upload", "chunk", "variant", "transcode", "finalize"]


def test_every_example_is_a_message_jetmedia_decodes() -> None:
    seen = 0
    for message in document()["components"]["messages"].values():
        assert message["examples"], message["name"]
        for example in message["examples"]:
            event = m.decode(msgspec.json.encode(example["payload"]))
            assert schemagen.tag_of(type(event)) == message["name"]
            assert example["headers"]["Nats-Msg-Id"] == event.id
            seen += 1
    assert seen == len(schemagen.CHANNELS)


def test_asyncapi_parser_and_strict_2020_12_compile_pass_without_warnings() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node and npm are needed: `make asyncapi` installs them (.ci/asyncapi/install-node)"
    if not (CHECK / "node_modules" / "@asyncapi" / "parser").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CHECK, check=True,
                       capture_output=True, timeout=600)
    done = subprocess.run([node, str(CHECK / "check.js"), str(ROOT / "schemas")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(0 errors, 0 warnings)" in done.stdout and "bad job ids refused" in done.stdout
    assert "warning" not in done.stdout.lower().replace("0 warnings", "")
