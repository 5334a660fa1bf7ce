"""The gateway's pieces that need no server: token configuration and checks, upload file names,
S3 notification keys and the ids derived from them."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from services.gateway import auth
from services.gateway.app import safe_filename
from services.gateway.hooks import S3Notification, event_id, hook_prefixes, object_key
from services.gateway.problems import Problem
from shared import messages as m
from shared.config import ConfigError, Settings


def entry(name: str, token: str, scopes: list[str], **extra: object) -> dict[str, object]:
    return {"name": name, "sha256": auth.hash_token(token), "scopes": scopes, **extra}


def test_tokens_load_from_json_or_a_file_hashed_with_defaults_from_settings(tmp_path: Path) -> None:
    listed = json.dumps([entry("web", "t1", ["submit", "read"]), entry("t", "t2", ["read"], prefix="a/", rate=2.0)])
    settings = Settings(gateway_tokens=listed, gateway_rate=7.0, gateway_burst=9, gateway_max_in_flight=3)
    tokens = auth.load_tokens(settings)
    web = tokens[auth.hash_token("t1")]
    assert (web.name, web.scopes, web.prefix, web.rate, web.burst, web.max_in_flight) == (
        "web", frozenset({"submit", "read"}), "", 7.0, 9, 3)
    assert tokens[auth.hash_token("t2")].rate == 2.0 and tokens[auth.hash_token("t2")].prefix == "a/"
    assert "t1" not in listed  # only hashes are configured
    path = tmp_path / "tokens.json"
    path.write_text(listed)
    assert auth.load_tokens(Settings(gateway_tokens=str(path))).keys() == tokens.keys()
    assert auth.load_tokens(Settings()) == {}


@pytest.mark.parametrize("setting", [
    "[{\"name\": \"x\"}]",  # no hash, no scopes
    json.dumps([entry("x", "t", ["everything"])]),  # unknown scope
    json.dumps([entry("bad name", "t", ["read"])]),  # a name that cannot key a KV record
    json.dumps([entry("x", "t", ["read"]), entry("x", "u", ["read"])]),  # two tokens, one name
    "/no/such/file.json",
])
def test_unusable_token_settings_are_configuration_errors(setting: str) -> None:
    with pytest.raises(ConfigError, match="JETMEDIA_GATEWAY_TOKENS"):
        auth.load_tokens(Settings(gateway_tokens=setting))


def test_authenticate_header_query_and_scopes() -> None:
    tokens = auth.load_tokens(Settings(gateway_tokens=json.dumps([entry("r", "secret", ["read"], prefix="p/")])))
    assert auth.authenticate(tokens, "Bearer secret", None, query_ok=False).name == "r"
    assert auth.authenticate(tokens, "bearer   secret ", None, query_ok=False).name == "r"
    assert auth.authenticate(tokens, None, "secret", query_ok=True).name == "r"
    refusals = ((None, "secret", False), ("Bearer nope", None, False), ("Basic secret", None, False),
                (None, None, True))
    for header, query, query_ok in refusals:
        with pytest.raises(Problem) as refused:
            auth.authenticate(tokens, header, query, query_ok=query_ok)
        assert refused.value.status == 401 and "secret" not in refused.value.detail
        assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    principal = auth.authenticate(tokens, "Bearer secret", None, query_ok=False)
    auth.require(principal, "read")
    auth.require_key(principal, "p/x.jpg")
    with pytest.raises(Problem, match="lacks the 'submit' scope"):
        auth.require(principal, "submit")
    with pytest.raises(Problem, match="under 'p/'"):
        auth.require_key(principal, "q/x.jpg")
    admin = auth.local_tokens(Settings(), "t")[auth.hash_token("t")]
    assert all(admin.allows(scope) for scope in auth.SCOPES)


def test_a_made_token_and_its_entry_round_trip(tmp_path: Path) -> None:
    token = auth.new_token()
    assert token.startswith("jm_") and len(token) > 40
    line = auth.token_entry("shop", token, ["submit"], "shop/")
    assert auth.load_tokens(Settings(gateway_tokens=f"[{line}]"))[auth.hash_token(token)].prefix == "shop/"
    assert auth.local_token(tmp_path) == auth.local_token(tmp_path)  # made once per data dir
    assert (tmp_path / "gateway-token").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("given", "stored"), [
    ("cat.jpg", "cat.jpg"), ("../../etc/passwd", "passwd"), ("C:\\Users\\me\\My Photo.JPG", "My Photo.JPG"),
    ("a\x00b\nc.png", "abc.png"), ("...", "upload"), ("", "upload"), ("naïve café.webp", "naïve café.webp"),
    ("x;rm -rf $(y).gif", "x_rm -rf _y_.gif"),
])
def test_upload_file_names_are_one_safe_segment(given: str, stored: str) -> None:
    assert safe_filename(given) == stored


def test_notification_keys_are_decoded_and_ids_follow_the_object_version() -> None:
    body = {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"},
                                                                     "object": {"key": "in/my+photo%281%29.jpg",
                                                                                "eTag": "abc"}}}]}
    record = msgspec.convert(body, S3Notification).Records[0]
    assert object_key(record) == "in/my photo(1).jpg"
    same = event_id("b", "in/my photo(1).jpg", '"abc"')
    assert same == event_id("b", "in/my photo(1).jpg", "abc") and m.is_job_id(same)
    assert same != event_id("b", "in/my photo(1).jpg", "abd") != event_id("c", "in/my photo(1).jpg", "abc")
    assert hook_prefixes(" incoming/, uploads/raw/ ,,") == ("incoming/", "uploads/raw/")
