"""Bearer tokens: configured hashed, each with scopes and an optional S3 key prefix.

JETMEDIA_GATEWAY_TOKENS holds a JSON list (or names a file holding it) of
`{"name": "web", "sha256": "<hex of the token>", "scopes": ["submit", "read"], "prefix": "tenant-a/"}`;
the token itself is never stored, so the configuration leaks nothing usable. Make one with
`jetmedia gateway token NAME --scopes submit,read` (prints the token once and its entry), or hash
an existing one: `printf %s "$TOKEN" | sha256sum`.

Scopes: `submit` (uploads, assets, exports), `read` (jobs, events), `cancel` (cancel, retry),
`admin` (everything, every job), `hook` (S3 notifications). A token with a `prefix` may only
name keys under it and only sees jobs whose source is under it or that it submitted.
Requests carry `Authorization: Bearer <token>`; GET requests and the S3 hook may carry
`?access_token=<token>` instead (a browser's EventSource cannot send headers, nor can every S3
server's notification target). Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shared.config import ConfigError, Settings

from .problems import Problem

Scope = Literal["submit", "read", "cancel", "admin", "hook"]
SCOPES: tuple[str, ...] = ("submit", "read", "cancel", "admin", "hook")
TOKEN_NAME = r"^[-_a-zA-Z0-9]{1,64}$"


class TokenConfig(msgspec.Struct, kw_only=True, frozen=True):
    """One configured token (hashed); rate and quota override the gateway-wide settings."""

    name: Annotated[str, Meta(pattern=TOKEN_NAME)]
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$")]
    scopes: list[Scope]
    prefix: str = ""
    rate: float | None = None  # requests per second (default JETMEDIA_GATEWAY_RATE)
    burst: int | None = None  # default JETMEDIA_GATEWAY_BURST
    max_in_flight: int | None = None  # default JETMEDIA_GATEWAY_MAX_IN_FLIGHT


class Principal(msgspec.Struct, kw_only=True, frozen=True):
    """Who is asking: the token's name, scopes, key prefix and limits (never the token)."""

    name: str
    scopes: frozenset[str]
    prefix: str
    rate: float
    burst: int
    max_in_flight: int

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may_touch(self, key: str) -> bool:
        return key.startswith(self.prefix)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "jm_" + secrets.token_urlsafe(32)


def load_tokens(settings: Settings) -> dict[str, Principal]:
    """sha256 hex -> Principal, from JETMEDIA_GATEWAY_TOKENS (JSON, or a path to a JSON file)."""
    raw = settings.gateway_tokens.strip()
    if not raw:
        return {}
    if not raw.startswith("["):
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"JETMEDIA_GATEWAY_TOKENS: neither a JSON list nor a readable file: {raw[:80]!r}")
        raw = path.read_text()
    try:
        configs = msgspec.json.decode(raw, type=list[TokenConfig])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"JETMEDIA_GATEWAY_TOKENS: {exc} (a JSON list of {{name, sha256, scopes, prefix}})") from None
    found: dict[str, Principal] = {}
    for one in configs:
        found[one.sha256.lower()] = Principal(
            name=one.name, scopes=frozenset(one.scopes), prefix=one.prefix,
            rate=one.rate if one.rate is not None else settings.gateway_rate,
            burst=one.burst if one.burst is not None else settings.gateway_burst,
            max_in_flight=one.max_in_flight if one.max_in_flight is not None else settings.gateway_max_in_flight,
        )
    if len({p.name for p in found.values()}) != len(found):
        raise ConfigError("JETMEDIA_GATEWAY_TOKENS: two tokens share a name (names key the rate limits and quotas)")
    return found


def local_token(data_dir: Path) -> str:
    """The token of a `jetmedia up` data directory: made on first use, kept in `gateway-token` (0600)."""
    path = data_dir / "gateway-token"
    if path.exists() and (token := path.read_text().strip()):
        return token
    data_dir.mkdir(parents=True, exist_ok=True)
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def local_tokens(settings: Settings, token: str) -> dict[str, Principal]:
    """`up`'s one token, allowed everything."""
    return {hash_token(token): Principal(name="local", scopes=frozenset(SCOPES), prefix="", rate=settings.gateway_rate,
                                         burst=settings.gateway_burst, max_in_flight=settings.gateway_max_in_flight)}


def token_entry(name: str, token: str, scopes: list[str], prefix: str = "") -> str:
    """The JETMEDIA_GATEWAY_TOKENS entry for a token (JSON)."""
    entry: dict[str, object] = {"name": name, "sha256": hash_token(token), "scopes": scopes}
    if prefix:
        entry["prefix"] = prefix
    return json.dumps(entry)


_BEARER = re.compile(r"^\s*Bearer\s+(?P<token>\S+)\s*$", re.IGNORECASE)


def authenticate(tokens: dict[str, Principal], authorization: str | None, query_token: str | None,
                 query_ok: bool) -> Principal:
    """The principal of a request, or a 401 problem. The query form only where `query_ok`: GET
    (EventSource cannot send headers) and the S3 hook (Ceph RGW's push endpoint cannot either)."""
    token: str | None = None
    if authorization:
        found = _BEARER.match(authorization)
        if found is None:
            raise Problem(401, "unauthorized", "the Authorization header must be `Bearer <token>`",
                          {"WWW-Authenticate": 'Bearer realm="jetmedia"'})
        token = found["token"]
    elif query_token and query_ok:
        token = query_token
    if not token:
        raise Problem(401, "unauthorized", "send `Authorization: Bearer <token>` (GET may use ?access_token=)",
                      {"WWW-Authenticate": 'Bearer realm="jetmedia"'})
    digest = hash_token(token)
    for known, principal in tokens.items():
        if hmac.compare_digest(known, digest):
            return principal
    raise Problem(401, "unauthorized", "unknown token",
                  {"WWW-Authenticate": 'Bearer realm="jetmedia", error="invalid_token"'})


def require(principal: Principal, scope: str) -> None:
    if not principal.allows(scope):
        raise Problem(403, "forbidden-scope", f"token {principal.name!r} lacks the {scope!r} scope")


def require_key(principal: Principal, key: str) -> None:
    if not principal.may_touch(key):
        raise Problem(403, "forbidden-prefix",
                      f"token {principal.name!r} may only name keys under {principal.prefix!r}; got {key!r}")
