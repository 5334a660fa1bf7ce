"""Our Standard Webhooks signatures, checked by the spec's own Python library (standardwebhooks)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.notify import signing

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_signature_is_the_specs() -> None:
    body = b'{"type":"jetmedia.asset.ready.v1","id":"job-1:ready"}'
    headers = signing.headers(SECRET, "job-1:ready", body, timestamp=1_700_000_000)
    stamp = datetime.fromtimestamp(1_700_000_000, UTC)
    assert headers["webhook-signature"] == Webhook(SECRET).sign("job-1:ready", stamp, body.decode())
    assert headers["webhook-id"] == "job-1:ready" and headers["webhook-timestamp"] == "1700000000"


def test_a_fresh_signature_verifies_and_any_change_does_not() -> None:
    body = b'{"id":"e1","data":{"job":"j"}}'
    headers = signing.headers(SECRET, "e1", body)
    assert Webhook(SECRET).verify(body, headers) == {"id": "e1", "data": {"job": "j"}}
    other = "whsec_" + base64.b64encode(b"another secret, 32 bytes long!!!").decode()
    for changed_body, changed_headers, secret in (
        (body.replace(b"j", b"k"), headers, SECRET),
        (body, {**headers, "webhook-id": "e2"}, SECRET),
        (body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}, SECRET),
        (body, headers, other),
    ):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(changed_body, changed_headers)


@pytest.mark.parametrize("secret, why", [
    ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with 'whsec_'"),
    ("whsec_c2hvcnQ=", "at least 16 bytes"),
])
def test_unusable_secrets_are_named_without_echoing_them(secret: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as found:
        signing.secret_bytes(secret)
    assert secret not in str(found.value)


def test_two_secrets_while_rotating_sign_twice_and_either_verifies() -> None:
    new = "whsec_" + base64.b64encode(b"the new secret, 32 bytes long!!!").decode()
    body = b'{"id":"e1"}'
    headers = signing.headers(f"{new} {SECRET}", "e1", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(body, headers) and Webhook(SECRET).verify(body, headers)
    with pytest.raises(ValueError):
        signing.check(f"{new} not-a-secret")
