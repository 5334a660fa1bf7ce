"""Who may do what on the bus: the NATS users of a jetmedia deployment, declared once.

Without users, anyone who can publish `jetmedia.upload.*` can also publish to the internal
subjects (a forged `jetmedia.variant` message failed a real job; hostile messages created job
records for ids that never existed). So the server runs with two users:

- `producer`: what a system that submits media needs, and nothing more: publish
  `jetmedia.upload.*` (either lane), read the events stream (its own consumers on JM_EVENTS) and read the job
  records (get and watch the `jetmedia-jobs` KV bucket). It cannot publish to a stage's subject,
  write a job record, or change streams.
- `jetmedia`: the stages, the collector, the CLI run by an operator: every `jetmedia.*` subject,
  the JetStream API, the job bucket. One service user for all stages rather than one per stage:
  each stage publishes to the next stage's subject, writes the job records and creates the shared
  layout at start-up, so per-stage users would differ little and cost a credential per stage.

The embedded server (shared/devstack.py) gets a config rendered from `users_config()` with
passwords generated once per data directory (file mode 0600); compose's nats service mounts
deploy/nats-auth.conf, the same rendering with the passwords read from the environment.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from . import bus
from .jobs import BUCKET

SERVICE_USER = "jetmedia"
PRODUCER_USER = "producer"
USERS = (SERVICE_USER, PRODUCER_USER)
PASSWORD_VARIABLES = {SERVICE_USER: "JETMEDIA_NATS_PASSWORD", PRODUCER_USER: "JETMEDIA_NATS_PRODUCER_PASSWORD"}

GATEWAY_BUCKET = "jetmedia-gateway"  # the HTTP gateway's KV: rate limits, quotas, request records (services/gateway)
WEBHOOKS_BUCKET = "jetmedia-webhooks"  # the notify stage's KV: one record per webhook attempt (services/notify)
_EVENTS = "JM_EVENTS"
_KV_STREAM = f"KV_{BUCKET}"


def _read_stream(stream: str) -> list[str]:
    """JetStream API subjects to read a stream through one's own consumers (pull or push,
    ephemeral or durable, ordered with flow control) and single-message gets."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def permissions() -> dict[str, dict[str, Any]]:
    """user -> nats-server `permissions` block."""
    upload_subjects = bus.STREAM_BY_NAME["JM_UPLOAD"].stream_subjects()  # both lanes (README "Priority lanes")
    return {
        SERVICE_USER: {
            "publish": {"allow": ["jetmedia.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", f"$KV.{BUCKET}.>",
                                  f"$KV.{GATEWAY_BUCKET}.>", f"$KV.{WEBHOOKS_BUCKET}.>"]},
            "subscribe": {"allow": ["jetmedia.>", "_INBOX.>", "$JS.EVENT.ADVISORY.>"]},
        },
        PRODUCER_USER: {
            "publish": {"allow": [*upload_subjects, "$JS.API.INFO", "$JS.API.STREAM.NAMES",
                                  *_read_stream(_EVENTS), *_read_stream(_KV_STREAM)]},
            "subscribe": {"allow": ["_INBOX.>", "jetmedia.events.>"]},
        },
    }


def users_config(passwords: dict[str, str]) -> dict[str, Any]:
    """The `authorization` block of a nats-server config (JSON is valid nats-server config)."""
    rules = permissions()
    return {"authorization": {"users": [
        {"user": user, "password": passwords[user], "permissions": rules[user]} for user in USERS
    ]}}


def load_or_create_passwords(directory: Path) -> dict[str, str]:
    """The passwords of a data directory: generated on first use, kept in `users.json` (0600)."""
    path = directory / "users.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        if set(USERS) <= set(stored):
            return stored
    directory.mkdir(parents=True, exist_ok=True)
    passwords = {user: secrets.token_urlsafe(24) for user in USERS}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(passwords, out)
    return passwords


def write_config(path: Path, passwords: dict[str, str]) -> Path:
    """A nats-server config file holding the users (mode 0600: it holds their passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(users_config(passwords), out, indent=2)
    return path


def compose_config() -> str:
    """deploy/nats-auth.conf: the same users, passwords taken from the nats container's
    environment (nats-server resolves `$NAME` from the environment)."""
    config = users_config({user: f"${variable}" for user, variable in PASSWORD_VARIABLES.items()})
    text = json.dumps(config, indent=2)
    for variable in PASSWORD_VARIABLES.values():  # a variable reference must not be quoted
        text = text.replace(f'"${variable}"', f"${variable}")
    header = ("# Generated from shared/natsauth.py by `python -m shared.natsauth`"
              " (tests/faults/test_permissions.py fails on drift).\n"
              "# Passwords come from the environment of the nats service (compose.yaml).\n")
    return header + text + "\n"


if __name__ == "__main__":
    (Path(__file__).resolve().parent.parent / "deploy" / "nats-auth.conf").write_text(compose_config())
