"""Standard Webhooks signatures (https://www.standardwebhooks.com/): what a receiver verifies.

`webhook-signature` is `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), where the
secret is the bytes behind `whsec_` + base64. The id is the event id, the same on every attempt,
so a receiver can dedupe; the timestamp is the attempt's, so a receiver's replay window holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

PREFIX = "whsec_"


def secret_bytes(secret: str) -> bytes:
    """The key behind a `whsec_...` secret; ValueError names what is wrong (never the secret)."""
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret[len(PREFIX):] + "==", validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64; this one does not decode") from None
    if len(key) < 16:
        raise ValueError("a webhook secret needs at least 16 bytes of key (whsec_ + base64 of 16-64 random bytes)")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def check(secrets: str) -> None:
    """Every secret of a setting (several, space-separated, while a secret is rotated)."""
    for secret in secrets.split():
        secret_bytes(secret)
    if not secrets.split():
        raise ValueError("a webhook secret is 'whsec_' followed by base64; this one is empty")


def headers(secrets: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three headers of one attempt (plus the content type). Several space-separated secrets
    give one signature each (the spec's rotation): receivers holding either the old or the new
    secret verify the same delivery."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": " ".join(signature(secret_bytes(s), msg_id, stamp, body) for s in secrets.split()),
        "content-type": "application/json",
    }
