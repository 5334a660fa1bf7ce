"""Errors as RFC 9457 problem details (`application/problem+json`): one shape for every refusal.

Handlers raise `Problem`; Litestar's own refusals (no route, a body too large, a body that is not
JSON or not the schema) are turned into the same shape, so a client reads `status`, `title` and
`detail` whatever went wrong. `type` is a URN naming the kind of problem (stable, not a link).
"""

from __future__ import annotations

import logging
from typing import Any

import botocore.exceptions
import msgspec
import nats.errors
import nats.js.errors
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from shared import messages as m

log = logging.getLogger("jetmedia.gateway")
MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:jetmedia:problem:"

TITLES = {
    400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found", 405: "method not allowed",
    409: "conflict", 413: "request body too large", 415: "unsupported media type", 422: "unprocessable request",
    429: "too many requests",
    500: "internal error", 503: "service unavailable",
}


class ProblemDetails(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str


class Problem(Exception):
    """A refusal with a problem body; `kind` names it (`urn:jetmedia:problem:<kind>`)."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}


def problem_response(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> Response[Any]:
    body = ProblemDetails(type=TYPE_PREFIX + kind, title=TITLES.get(status, "error"), status=status, detail=detail)
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def on_problem(_: Request[Any, Any, Any], exc: Problem) -> Response[Any]:
    return problem_response(exc.status, exc.kind, exc.detail, exc.headers)


def on_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Litestar's refusal of a body or parameter that does not fit the schema: 422 for a body that
    parsed as JSON, 400 for a query or path parameter; the detail names the field."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = [f"{item.get('key')}: {_plainly(str(item.get('message')))}" for item in extra if isinstance(item, dict)]
    body = any(isinstance(item, dict) and item.get("source") == "body" for item in extra)
    if parts == ["data: 'data'"]:  # Litestar's words for a request without a body
        return problem_response(422, "invalid-body", "the body is empty: send a JSON object "
                                                     "(Content-Type: application/json)")
    detail = "; ".join(parts) or str(exc.detail)
    if body:
        return problem_response(422, "invalid-body", detail)
    return problem_response(400, "invalid-parameter", detail)


def _plainly(message: str) -> str:
    """A schema message in a client's terms: a job id or callback URL pattern is named, not quoted
    as a regular expression (the same words as on the bus: messages.explain)."""
    if "matching regex" in message and "a-zA-Z0-9" in message:
        return f"not a job id ({m.JOB_ID_RULE})"
    if "matching regex" in message and "[hH][tT]" in message:
        return "not an http(s) URL (http:// or https://, a host, no user:password@)"
    return message


def on_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """A body nested deeper than the JSON decoder goes: the client's input, not the gateway's fault."""
    log.info("%s %s: body nested too deeply", request.method, request.url.path)
    return problem_response(400, "malformed-body", "the body is not JSON the gateway reads: nested too deeply")


def on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    kinds = {400: "malformed-body", 404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
    detail = str(exc.detail)
    if status == 400:
        detail = f"the body is not JSON ({exc.detail})"
        if unsupported := _not_json(request):  # `curl -d a=b` sends a form; `-F` multipart; gzip
            return problem_response(415, "unsupported-media-type", f"{detail}: {unsupported}")
    elif status == 413:
        detail = "the request body is over the gateway's limit (JETMEDIA_GATEWAY_BODY_LIMIT)"
    return problem_response(status, kinds.get(status, "http"), detail, dict(exc.headers or {}))


def _not_json(request: Request[Any, Any, Any]) -> str | None:
    """Why a body that did not parse was never JSON to begin with, from its headers, or None. A
    JSON body under another Content-Type is still read (curl's `-d` says form-urlencoded)."""
    encoding = request.headers.get("content-encoding", "")
    if encoding and encoding.lower() != "identity":
        return f"it is {encoding[:40]!r}-encoded; send it uncompressed (no Content-Encoding)"
    sent = request.headers.get("content-type", "")
    if sent and "json" not in sent.lower():
        return f"it was sent as {sent.split(';')[0][:80]!r}; send JSON with Content-Type: application/json"
    return None


def on_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """NATS or S3 did not answer (an outage, a leader election): 503, worth retrying."""
    log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return problem_response(503, "unavailable", f"NATS or S3 did not answer ({type(exc).__name__}); retry shortly",
                            {"Retry-After": "2"})


def on_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything unexpected: logged with the route (never the query: it may hold a token), 500."""
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
    return problem_response(500, "internal", f"{type(exc).__name__}: the gateway could not answer this request")


UNAVAILABLE: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError, nats.js.errors.ServiceUnavailableError,
    botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError, TimeoutError,
)
HANDLERS: dict[int | type[Exception], Any] = {
    Problem: on_problem, ValidationException: on_validation, HTTPException: on_http, Exception: on_error,
    RecursionError: on_too_deep,
    **dict.fromkeys(UNAVAILABLE, on_unavailable),
}
