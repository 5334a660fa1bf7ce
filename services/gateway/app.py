"""The gateway's routes: jetmedia's HTTP front door (README: HTTP API).

Every route is a thin translation: check the token (auth.py) and its rate (limits.py), then do
what the CLI does over NATS and S3 (publish the producer's request, read or watch the job record,
cancel, replay dead letters) with the same Structs the bus carries, so a field added to a request
(`AssetUploadedData`, `ExportRequestedData`) is accepted here and documented in /openapi.json
without touching this file. The gateway keeps no state of its own: KV and S3 hold it all, so any
number of replicas serve the same API.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import botocore.exceptions
import msgspec
from litestar import Litestar, Request, Response, delete, get, post, route
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.static_files import create_static_files_router
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from swagger_ui_bundle import swagger_ui_path

from shared import __version__, bus, dlq
from shared import messages as m
from shared.config import Settings
from shared.errors import UnknownJob, is_transient, s3_code
from shared.jobs import RERUNNABLE, Job, recent_jobs
from shared.runtime import Services

from . import auth, sse
from .feed import JobFeed
from .hooks import HookJob, HookResult, S3Notification, envelope_problem, event_id, hook_prefixes, object_key
from .limits import GatewayState, RequestRecord
from .problems import HANDLERS, MEDIA_TYPE, Problem, ProblemDetails
from .views import JobList, JobView, job_view, queued_view

log = logging.getLogger("jetmedia.gateway")

STATIC = Path(__file__).resolve().parent / "static"
# Swagger UI from its wheel, not a CDN: /docs works where the browser cannot reach the internet,
# and the operators' browsers load no third-party script
SWAGGER_ASSETS = "/docs/assets"
SOURCE = "jetmedia-gateway"
MAX_STORED_REQUEST = 256 * 1024  # request bodies up to this are kept (for POST /v1/jobs/{id}/retry)
IdempotencyKey = Annotated[str | None, HeaderParameter(
    name="Idempotency-Key", required=False, max_length=255,
    description="Makes a retried POST one job: the job id is derived from it (and the token).")]


@dataclass
class Gateway:
    """What every request shares: the process's connections, the tokens, the KV-held limits."""

    settings: Settings
    services: Services
    state: GatewayState
    tokens: dict[str, auth.Principal]
    feed: JobFeed  # the process's one watch of the jobs bucket, fanned out to the SSE streams

    @property
    def hook_prefixes(self) -> tuple[str, ...]:
        return hook_prefixes(self.settings.gateway_hook_prefixes)


# --- request and response bodies ---------------------------------------------------------


class UploadRequest(msgspec.Struct, kw_only=True, frozen=True):
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    content_type: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "application/octet-stream"


class UploadTicket(msgspec.Struct, kw_only=True, frozen=True):
    key: str  # where the object will be; name it in POST /v1/assets
    url: str  # presigned SigV4 PUT URL
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]  # send these with the PUT (the Content-Type is part of the signature)
    expires_at: datetime


class Accepted(msgspec.Struct, kw_only=True, frozen=True):
    job_id: str
    status_url: str
    events_url: str
    duplicate: bool = False  # True: this request (same Idempotency-Key) had already started the job


class Health(msgspec.Struct, kw_only=True, frozen=True):
    status: Literal["ok", "degraded"]
    nats: bool
    version: str


PROBLEMS = {
    code: ResponseSpec(data_container=ProblemDetails, media_type=MEDIA_TYPE, description=text, generate_examples=False)
    for code, text in {
        400: "malformed request", 401: "no or unknown token", 403: "scope or key prefix not allowed",
        404: "no such job", 409: "conflict with the job's state or an earlier request",
        413: "body over the limit", 415: "body not JSON: a form, multipart or compressed",
        422: "body does not fit the schema", 429: "rate limit or jobs-in-flight quota",
    }.items()
}
AUTHED: list[dict[str, list[str]]] = [{"bearer": []}]
AUTHED_GET: list[dict[str, list[str]]] = [{"bearer": []}, {"access_token": []}]


def gw(request: Request[Any, Any, Any]) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def caller(request: Request[Any, Any, Any], scope: str) -> auth.Principal:
    """The principal behind the request with `scope`, one rate-limit token spent (401/403/429)."""
    gateway = gw(request)
    principal = auth.authenticate(gateway.tokens, request.headers.get("authorization"),
                                  request.query_params.get("access_token"),
                                  query_ok=request.method == "GET" or scope == "hook")
    auth.require(principal, scope)
    await gateway.state.take(principal)
    return principal


def links(job_id: str) -> Accepted:
    return Accepted(job_id=job_id, status_url=f"/v1/jobs/{job_id}", events_url=f"/v1/jobs/{job_id}/events")


def idempotent_id(principal: auth.Principal, key: str) -> str:
    """The job id an Idempotency-Key names for this token: the same key always the same job, and
    two tokens' keys never collide (one cannot reach another's job by guessing its key)."""
    if not key or len(key) > 255 or not key.isprintable():
        raise Problem(400, "invalid-idempotency-key", "Idempotency-Key: 1-255 printable characters")
    return "idem-" + hashlib.sha256(f"{principal.name}\n{key}".encode()).hexdigest()[:40]


# --- visibility ------------------------------------------------------------------------------


async def visible_job(gateway: Gateway, principal: auth.Principal,
                      job_id: str) -> tuple[Job | None, RequestRecord | None]:
    """The job's record (None while queued) and request record, or 404 when there is neither or
    the token may not see it (outside its prefix and not submitted by it: no existence leak)."""
    if not m.is_job_id(job_id):
        raise Problem(404, "not-found", f"no job {job_id!r}")
    job, request = await asyncio.gather(gateway.services.jobs.get(job_id), gateway.state.request(job_id))
    if job is None and request is None:
        raise Problem(404, "not-found", f"no job {job_id!r}")
    if not sees(principal, job, request):
        raise Problem(404, "not-found", f"no job {job_id!r}")
    return job, request


def sees(principal: auth.Principal, job: Job | None, request: RequestRecord | None) -> bool:
    if not principal.prefix or "admin" in principal.scopes:
        return True
    if request is not None and request.token == principal.name:
        return True
    return job is not None and job.source_key is not None and principal.may_touch(job.source_key)


async def view_of(gateway: Gateway, job: Job | None, request: RequestRecord | None, job_id: str) -> JobView:
    if job is not None:
        return await job_view(job, gateway.services.storage)
    assert request is not None
    return queued_view(job_id, request.kind, datetime.fromtimestamp(request.at, UTC), request.key)


# --- submitting --------------------------------------------------------------------------------


async def submit(gateway: Gateway, principal: auth.Principal, kind: Literal["asset", "export"], data: Any,
                 idempotency_key: str | None, job_id: str | None = None,
                 event_id_: str | None = None) -> Response[Accepted]:
    """Publish the producer's request for a job, once: the job id comes from the body's `job_id`,
    else from the Idempotency-Key, else a new one. A request whose job exists already (a retry)
    answers with that job, and publishes nothing unless the job has no record yet (the first
    publish may have been lost; the stream's duplicate window drops a copy)."""
    explicit = data.job_id
    keyed = idempotent_id(principal, idempotency_key) if idempotency_key else None
    job_id = job_id or explicit or keyed or m.new_id()
    event_id_ = event_id_ or keyed or job_id  # the Nats-Msg-Id: a retry within the duplicate window is dropped
    data = msgspec.structs.replace(data, job_id=job_id)
    body = msgspec.json.encode(data)
    digest = hashlib.sha256(kind.encode() + b"\n" + body).hexdigest()
    gateway_jobs = gateway.services.jobs
    earlier, record = await asyncio.gather(gateway.state.request(job_id), gateway_jobs.get(job_id))
    if earlier is not None:
        if earlier.token != principal.name or earlier.digest != digest:
            raise Problem(409, "idempotency-conflict",
                          f"job {job_id!r} was started by a different request; a reused Idempotency-Key or job_id "
                          "must carry the same body")
        if record is None:
            await publish(gateway, kind, event_id_, data)
        return Response(msgspec.structs.replace(links(job_id), duplicate=True), status_code=202)
    if record is not None:
        if not explicit and idempotency_key:  # derived from this token's key: only this token can name it
            return Response(msgspec.structs.replace(links(job_id), duplicate=True), status_code=202)
        raise Problem(409, "job-exists", f"job {job_id!r} exists already; choose another job_id")

    async def ended(job: str) -> bool | None:
        found = await gateway_jobs.get(job)
        return None if found is None else found.final

    await gateway.state.admit(principal, job_id, ended)
    key = data.key if kind == "asset" else None
    stored, first = await gateway.state.remember(job_id, RequestRecord(
        token=principal.name, kind=kind, digest=digest, at=datetime.now(UTC).timestamp(), key=key,
        data=msgspec.Raw(body if len(body) <= MAX_STORED_REQUEST else b"null")))
    if stored.digest != digest or stored.token != principal.name:  # a concurrent different request won
        raise Problem(409, "idempotency-conflict", f"job {job_id!r} was started by a different request")
    await publish(gateway, kind, event_id_, data)  # also when the same request won a race: the server drops a copy
    return Response(msgspec.structs.replace(links(job_id), duplicate=not first), status_code=202)


async def publish(gateway: Gateway, kind: str, event_id_: str, data: Any) -> None:
    event: m.AssetUploaded | m.ExportRequested
    if kind == "asset":
        event = m.AssetUploaded(id=event_id_, source=SOURCE, time=m.now(), data=data)
        subject = m.UPLOAD_ASSET
    else:
        event = m.ExportRequested(id=event_id_, source=SOURCE, time=m.now(), data=data)
        subject = m.UPLOAD_EXPORT
    await bus.publish(gateway.services.js, subject, event)


def check_bucket(gateway: Gateway, principal: auth.Principal, bucket: str | None) -> None:
    if bucket not in (None, gateway.settings.bucket) and principal.prefix:
        raise Problem(403, "forbidden-bucket", f"token {principal.name!r} may only use bucket "
                                               f"{gateway.settings.bucket!r}")


def check_callback(url: str | None) -> None:
    """What the schema cannot say of a callback URL (a port out of range), refused at the door
    rather than as a failed job a moment later."""
    if url and (problem := m.callback_problem(url)):
        raise Problem(422, "invalid-callback-url", problem)


_UNSAFE = re.compile(r"[^\w.\- ]+")


def safe_filename(name: str) -> str:
    """The last path segment, without control characters or separators (a browser's File.name)."""
    base = posixpath.basename(name.replace("\\", "/"))
    base = "".join(ch for ch in unicodedata.normalize("NFC", base) if unicodedata.category(ch)[0] != "C")
    base = _UNSAFE.sub("_", base).strip(" .")
    return base[:200] or "upload"


# --- routes ------------------------------------------------------------------------------------


@post("/v1/uploads", status_code=201, security=AUTHED, responses=PROBLEMS, tags=["uploads"])
async def create_upload(request: Request[Any, Any, Any], data: JSONBody[UploadRequest]) -> UploadTicket:
    """A presigned PUT URL: the browser uploads the file straight to S3, then names `key` in
    POST /v1/assets. The key is under the token's prefix."""
    principal = await caller(request, "submit")
    gateway = gw(request)
    if not (data.content_type.isascii() and data.content_type.isprintable()):
        # signed into the URL, sent back as a header: one with CR/LF or non-ASCII no client can send
        raise Problem(422, "invalid-body", f"content_type: {data.content_type[:80]!r} is not a header value "
                                           "(printable ASCII, e.g. image/jpeg)")
    key = f"{principal.prefix}uploads/{m.new_id()[:16]}/{safe_filename(data.filename)}"
    ttl = int(gateway.settings.gateway_upload_ttl)
    url: str = await gateway.services.storage.client.generate_presigned_url(
        "put_object", Params={"Bucket": gateway.settings.bucket, "Key": key, "ContentType": data.content_type},
        ExpiresIn=ttl)
    return UploadTicket(key=key, url=url, headers={"Content-Type": data.content_type},
                        expires_at=datetime.now(UTC) + timedelta(seconds=ttl))


@post("/v1/assets", status_code=202, security=AUTHED, responses=PROBLEMS, tags=["jobs"])
async def create_asset(request: Request[Any, Any, Any], data: JSONBody[m.AssetUploadedData],
                       idempotency_key: IdempotencyKey = None) -> Response[Accepted]:
    """Start an asset job for an object in S3 (images: variants; audio/video: transcodes)."""
    principal = await caller(request, "submit")
    gateway = gw(request)
    auth.require_key(principal, data.key)
    check_bucket(gateway, principal, data.bucket)
    check_callback(data.callback_url)
    if principal.prefix and "admin" not in principal.scopes and data.asset_id not in (None, data.job_id):
        # outputs live at variants/{asset}/, transcodes/{asset}/ whoever asked: a chosen asset id
        # would overwrite another tenant's outputs
        raise Problem(403, "forbidden-asset-id", f"token {principal.name!r} is limited to the prefix "
                                                 f"{principal.prefix!r} and may not choose asset_id "
                                                 "(the job id names the asset)")
    where = f"s3://{data.bucket or gateway.settings.bucket}/{data.key}"
    try:
        found = await gateway.services.storage.head(data.key, data.bucket)
    except botocore.exceptions.ParamValidationError:
        raise Problem(422, "invalid-bucket", f"bucket {data.bucket!r} is not a valid S3 bucket name") from None
    except botocore.exceptions.ClientError as exc:
        if is_transient(exc):
            raise Problem(503, "unavailable", f"S3 did not answer for {where} ({s3_code(exc)}); retry shortly",
                          {"Retry-After": "2"}) from None
        raise Problem(422, "s3-refused", f"S3 refuses to read {where} ({s3_code(exc)}: "
                                         f"{exc.response.get('Error', {}).get('Message', '')})") from None
    if found is None:
        raise Problem(422, "no-such-object", f"no object at {where} (upload it first: POST /v1/uploads, then PUT)")
    return await submit(gateway, principal, "asset", data, idempotency_key)


@post("/v1/exports", status_code=202, security=AUTHED, responses=PROBLEMS, tags=["jobs"])
async def create_export(request: Request[Any, Any, Any], data: JSONBody[m.ExportRequestedData],
                        idempotency_key: IdempotencyKey = None) -> Response[Accepted]:
    """Start an export: one ZIP of many objects; the job's `download_url` once ready."""
    principal = await caller(request, "submit")
    gateway = gw(request)
    if not data.keys and not data.items and data.prefix is None:
        raise Problem(422, "nothing-to-export", "name the objects to export: keys, items and/or prefix")
    for key in [*data.keys, *(item.key for item in data.items)]:
        auth.require_key(principal, key)
    if principal.prefix and data.prefix is not None:
        auth.require_key(principal, data.prefix)
    check_bucket(gateway, principal, data.bucket)
    check_callback(data.callback_url)
    return await submit(gateway, principal, "export", data, idempotency_key)


@get("/v1/jobs/{job_id:str}", security=AUTHED_GET, responses=PROBLEMS, tags=["jobs"])
async def get_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> JobView:
    """A job's state, outputs with presigned URLs, and an export's download URL."""
    principal = await caller(request, "read")
    gateway = gw(request)
    job, record = await visible_job(gateway, principal, job_id)
    return await view_of(gateway, job, record, job_id)


@delete("/v1/jobs/{job_id:str}", status_code=200, security=AUTHED, responses=PROBLEMS, tags=["jobs"])
async def cancel_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> JobView:
    """Cancel a job: running work stops at the next boundary and leaves nothing behind."""
    principal = await caller(request, "cancel")
    gateway = gw(request)
    job, _ = await visible_job(gateway, principal, job_id)
    if job is None:
        raise Problem(409, "not-started", f"job {job_id!r} is queued and has no record yet; retry in a moment")
    if job.final:
        raise Problem(409, "already-ended", f"job {job_id!r} is already {job.status}; nothing to cancel")
    try:
        await gateway.services.cancel(job_id, f"cancelled through the gateway by {principal.name}")
    except UnknownJob:
        raise Problem(404, "not-found", f"no job {job_id!r}") from None
    current = await gateway.services.jobs.get(job_id)
    assert current is not None
    return await job_view(current, gateway.services.storage)


@post("/v1/jobs/{job_id:str}/retry", status_code=202, security=AUTHED, responses=PROBLEMS, tags=["jobs"])
async def retry_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Accepted]:
    """Run a failed or cancelled job again: from its dead letters if it has some, else by
    publishing its request again (a new message: the upload stage starts attempt n+1). Scope
    `cancel`: like cancelling, it steers a job that exists."""
    principal = await caller(request, "cancel")
    gateway = gw(request)
    job, record = await visible_job(gateway, principal, job_id)
    if job is None or job.status not in RERUNNABLE:
        status = job.status if job else "queued"
        raise Problem(409, "not-rerunnable", f"job {job_id!r} is {status}; only failed or cancelled jobs run again")
    try:
        done = await dlq.retry(gateway.services, job_id)
        if done.replayed:
            return Response(links(job_id), status_code=202)
    except LookupError:
        pass
    data: m.AssetUploadedData | m.ExportRequestedData | None = None
    stored = record.stored_data if record is not None else None
    if record is not None and stored is not None:
        if record.kind == "asset":
            data = msgspec.json.decode(stored, type=m.AssetUploadedData)
        else:
            data = msgspec.json.decode(stored, type=m.ExportRequestedData)
    elif job.kind == "asset" and job.source_key:
        data = m.AssetUploadedData(key=job.source_key, job_id=job_id, asset_id=job.asset)
    if data is None:
        raise Problem(409, "not-rerunnable", f"job {job_id!r} has no dead letter and no stored request to run again")
    await publish(gateway, job.kind, m.new_id(), data)
    return Response(links(job_id), status_code=202)


@get("/v1/jobs", security=AUTHED_GET, responses=PROBLEMS, tags=["jobs"])
async def list_jobs(
    request: Request[Any, Any, Any],
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    status: FromQuery[Literal["queued", "running", "ready", "failed", "cancelled", "expired"] | None] = None,
    kind: FromQuery[Literal["asset", "export"] | None] = None,
) -> JobList:
    """Recent jobs, newest first (those the token may see), and the dead-letter count."""
    principal = await caller(request, "read")
    gateway = gw(request)
    restricted = bool(principal.prefix) and "admin" not in principal.scopes
    jobs = await recent_jobs(gateway.services.jobs, limit * 4 if restricted else limit,
                             lambda j: (status is None or j.status == status) and (kind is None or j.kind == kind))
    if restricted:
        requests = await asyncio.gather(*(gateway.state.request(j.id) for j in jobs))
        jobs = [j for j, r in zip(jobs, requests, strict=False) if sees(principal, j, r)]
    chosen = jobs[:limit]
    views = await asyncio.gather(*(job_view(j, gateway.services.storage) for j in chosen))
    info = await gateway.services.js.stream_info(dlq.STREAM)
    return JobList(jobs=list(views), dead_letters=info.state.messages)


@get("/v1/jobs/{job_id:str}/events", security=AUTHED_GET, responses=PROBLEMS, tags=["jobs"],
     response_description="text/event-stream: `event: job`, `id: <KV revision>`, `data: <JobView JSON>`",
     media_type="text/event-stream")
async def job_events(
    request: Request[Any, Any, Any], job_id: FromPath[str],
    last_event_id: Annotated[int | None, QueryParameter(name="last_event_id", ge=0, required=False)] = None,
) -> Stream:
    """Server-Sent Events: one `job` event per revision of the job record (id = the KV revision),
    `: heartbeat` comments while idle; ends after the final state. Resume with Last-Event-ID."""
    principal = await caller(request, "read")
    gateway = gw(request)
    await visible_job(gateway, principal, job_id)
    after = last_event_id or 0
    header = request.headers.get("last-event-id")
    if header:
        try:
            after = max(after, int(header))
        except ValueError:
            raise Problem(400, "invalid-parameter", "Last-Event-ID: not a revision number") from None

    async def render(job: Job) -> JobView:
        return await job_view(job, gateway.services.storage)

    if not await gateway.feed.ready(timeout=5.0):
        raise Problem(503, "unavailable", "the gateway is not watching job records right now; retry shortly")
    stream = sse.job_events(gateway.feed, gateway.services.jobs, job_id, after, gateway.settings.gateway_heartbeat,
                            render)
    return Stream(stream, media_type="text/event-stream",
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@post("/v1/hooks/s3", status_code=202, security=AUTHED_GET, responses=PROBLEMS, tags=["hooks"])
async def s3_hook(request: Request[Any, Any, Any], data: JSONBody[S3Notification]) -> HookResult:
    """S3 event notifications (AWS, MinIO, Ceph RGW webhook shape): each created object under
    the hook prefixes starts an asset job, once (the job id comes from bucket/key/eTag)."""
    principal = await caller(request, "hook")
    gateway = gw(request)
    if (problem := envelope_problem(data)) is not None:
        log.warning("S3 hook: refused %s", problem)
        raise Problem(422, "not-an-s3-notification", f"the body is {problem}")
    jobs: list[HookJob] = []
    skipped: list[str] = []
    for record in data.Records:
        bucket, key = record.s3.bucket.name, object_key(record)
        if "ObjectCreated:" not in record.eventName:
            skipped.append(f"{key}: {record.eventName} is not an object creation")
        elif bucket != gateway.settings.bucket:
            skipped.append(f"{key}: bucket {bucket!r} is not {gateway.settings.bucket!r}")
        elif not any(key.startswith(p) for p in gateway.hook_prefixes) or not principal.may_touch(key):
            skipped.append(f"{key}: not under the hook prefixes {list(gateway.hook_prefixes)}")
        else:
            job_id = event_id(bucket, key, record.s3.object.eTag)
            await submit(gateway, principal, "asset", m.AssetUploadedData(key=key), None, job_id=job_id,
                         event_id_=job_id)
            jobs.append(HookJob(bucket=bucket, key=key, job_id=job_id, status_url=f"/v1/jobs/{job_id}"))
    return HookResult(jobs=jobs, skipped=skipped)


@route("/healthz", http_method=["GET", "HEAD"], tags=["ops"])
async def healthz(request: Request[Any, Any, Any]) -> Response[Health]:
    """200 while NATS is connected (compose's health check), 503 otherwise; HEAD too (uptime
    monitors and `curl -I` ask with HEAD, which was a 405)."""
    connected = bool(gw(request).services.nc.is_connected)
    body = Health(status="ok" if connected else "degraded", nats=connected, version=__version__)
    return Response(body, status_code=200 if connected else 503)


@get("/metrics", include_in_schema=False)
async def metrics_route() -> Response[bytes]:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    return Response(request.app.openapi_schema.to_schema(), media_type="application/json")


ROUTES = [create_upload, create_asset, create_export, get_job, cancel_job, retry_job, list_jobs, job_events,
          s3_hook, healthz, metrics_route, openapi_json]


def create_app(gateway: Gateway) -> Litestar:
    handlers: list[Any] = list(ROUTES)
    if STATIC.is_dir():
        handlers.append(create_static_files_router(path="/", directories=[STATIC], html_mode=True, name="page"))
    handlers.append(create_static_files_router(path=SWAGGER_ASSETS, directories=[swagger_ui_path], name="swagger"))
    return Litestar(
        route_handlers=handlers,
        exception_handlers=dict(HANDLERS),
        request_max_body_size=gateway.settings.gateway_body_limit,
        state=State({"gateway": gateway}),
        openapi_config=OpenAPIConfig(
            title="jetmedia", version=__version__, path="/docs", render_plugins=[SwaggerRenderPlugin(
                path="/", js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js", css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{SWAGGER_ASSETS}/swagger-ui-standalone-preset.js")],
            description="jetmedia's HTTP API: uploads, asset and export jobs, live progress (SSE), S3 hooks. "
                        "Errors are RFC 9457 problem details (application/problem+json).",
            components=Components(security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer",
                                         description="Authorization: Bearer <token> (JETMEDIA_GATEWAY_TOKENS)"),
                "access_token": SecurityScheme(type="apiKey", name="access_token", security_scheme_in="query",
                                               description="the token as ?access_token= (GET only: EventSource)"),
            }),
        ),
        debug=False,
        logging_config=None,  # jetmedia's own log format stays (Litestar's default rewires the root logger)
    )
