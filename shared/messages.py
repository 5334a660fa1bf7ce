"""Every message on the bus: CloudEvents 1.0 structured JSON, one Struct per event type.

The CloudEvents `type` attribute is msgspec's tag, so `decode()` is a single tagged-union
decoder built once. Evolution rules (see README): new fields get defaults, types never
change, a breaking change is a new `type` with the next `.vN` suffix.

Producers outside Python need only schemas/ (generated from these classes by
`jetmedia schemas`), and the subject table in `SUBJECTS`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import typing
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

# --- subjects ---------------------------------------------------------------------------

UPLOAD_ASSET = "jetmedia.upload.asset"
UPLOAD_EXPORT = "jetmedia.upload.export"
UPLOAD_CANCEL = "jetmedia.upload.cancel"
CHUNK = "jetmedia.chunk"
VARIANT = "jetmedia.variant"
TRANSCODE = "jetmedia.transcode"
FINALIZE_ASSET = "jetmedia.finalize.asset"
FINALIZE_EXPORT = "jetmedia.finalize.export"
EVENTS_ASSET_READY = "jetmedia.events.asset.ready"
EVENTS_EXPORT_READY = "jetmedia.events.export.ready"
EVENTS_JOB_FAILED = "jetmedia.events.job.failed"
EVENTS_JOB_CANCELLED = "jetmedia.events.job.cancelled"
EVENTS_JOB_EXPIRED = "jetmedia.events.job.expired"
EVENTS_REJECTED = "jetmedia.events.rejected"
DLQ_PREFIX = "jetmedia.dlq"

# What NATS KV accepts as a key, and a little less: dot-separated tokens of [-_=a-zA-Z0-9] (no
# empty token, so no leading/trailing dot and no `..`), at most 200 characters. KV refuses `.a`,
# `a.` and `.`; the server refuses `a..b`; `/` is left out as it means a path in S3 keys. A `.chunk.`
# inside is reserved: `{job}.chunk.{n}` keys hold an export's chunk records (shared/exportplan.py).
JOB_ID_PATTERN = r"^(?!.*\.chunk\.)[-_=a-zA-Z0-9]+(\.[-_=a-zA-Z0-9]+)*$"
JOB_ID_MAX = 200
JOB_ID_RULE = "dot-separated tokens of [-_=a-zA-Z0-9], at most 200 characters, no '.chunk.'"
JobId = Annotated[str, Meta(pattern=JOB_ID_PATTERN, min_length=1, max_length=JOB_ID_MAX,
                            description="KV-safe job id: dot-separated tokens of [-_=a-zA-Z0-9]")]
S3Key = Annotated[str, Meta(min_length=1, max_length=1024, description="S3 object key")]
MediaKind = Literal["image", "audio", "video"]
CallbackUrl = Annotated[str, Meta(pattern=r"^[hH][tT][tT][pP][sS]?://[^/?#@\s]+([/?#]\S*)?$", max_length=2048,
                                  description="http(s) URL (no user:password@) that gets the job's final events")]


def now() -> datetime:
    return datetime.now(UTC)


# --- envelope ----------------------------------------------------------------------------


Priority = Literal["interactive", "bulk"]  # README "Priority lanes"

class Event(Struct, kw_only=True, frozen=True, tag_field="type", omit_defaults=False):
    """CloudEvents 1.0 attributes shared by every message; `type` is the tag."""

    specversion: Literal["1.0"] = "1.0"
    id: Annotated[str, Meta(min_length=1, max_length=256)]
    source: Annotated[str, Meta(min_length=1)] = "jetmedia"
    time: datetime | None = None
    subject: str | None = None  # the job id, on every message jetmedia emits
    # JSON; media-type parameters as HTTP gives them (`application/json; charset=utf-8`) are fine
    datacontenttype: Annotated[str, Meta(pattern=r"^application/json\s*(;.*)?$")] = "application/json"


# --- asset flow ------------------------------------------------------------------------


ProducerEventId = Annotated[str, Meta(
    pattern=JOB_ID_PATTERN, min_length=1, max_length=JOB_ID_MAX,
    description="Names the job unless data.job_id does, so it is a job id: dot-separated tokens of "
                "[-_=a-zA-Z0-9], at most 200 characters (a UUID is one)")]


class AssetUploadedData(Struct, kw_only=True, frozen=True):
    key: S3Key
    bucket: str | None = None  # default: JETMEDIA_BUCKET
    job_id: JobId | None = None  # default: the event id
    asset_id: JobId | None = None  # default: the job id
    presets: list[str] | None = None  # variant presets to make; default: all configured
    # priority lane of every step of this job (README "Priority lanes"); default: interactive
    priority: Priority | None = None
    callback_url: CallbackUrl | None = None  # POSTed each final event, signed (README "Webhooks")


class AssetUploaded(Event, tag="jetmedia.asset.uploaded.v1", frozen=True):
    """A producer says: this object landed in S3, make it web-ready."""

    id: ProducerEventId
    data: AssetUploadedData


class ExportItemRef(Struct, kw_only=True, frozen=True):
    """Marks a variant/transcode request as one item of an export's per-item transform (`job` is
    the export): the stage writes the output at its deterministic key and counts the item on the
    chunk's record (`{job}.chunk.{n}.items`, shared/exportitems.py), not as an asset part."""

    chunk: int  # the export's chunk the item belongs to
    index: int  # the item's place among that chunk's items
    attempt: int = 1  # the export attempt that asked (an earlier attempt's late item is dropped)


class VariantRequestedData(Struct, kw_only=True, frozen=True):
    job: JobId
    asset: JobId
    bucket: str
    key: S3Key
    part: str = "variant"  # the job part this work fills (`poster` for a video's frame)
    presets: list[str] | None = None
    export: ExportItemRef | None = None  # set: one item of an export's "display" transform


class VariantRequested(Event, tag="jetmedia.variant.requested.v1", frozen=True):
    data: VariantRequestedData


class MediaInfo(Struct, kw_only=True, frozen=True):
    """Facts about one source or output file; fields a kind of media lacks stay None."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    bytes: int | None = None
    # audio/video facts (transcode stage)
    video_codec: str | None = None
    audio_codec: str | None = None
    bitrate: int | None = None  # bits per second, whole file
    fps: float | None = None


class OutputFile(Struct, kw_only=True, frozen=True):
    preset: str
    key: S3Key
    format: str
    bytes: int
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    # audio/video facts (transcode stage)
    video_codec: str | None = None
    audio_codec: str | None = None
    bitrate: int | None = None  # bits per second, whole file
    fps: float | None = None


class PartData(Struct, kw_only=True, frozen=True):
    """One finished piece of an asset job; finalize merges parts in any order."""

    job: JobId
    asset: JobId
    part: str
    outputs: list[OutputFile] = []
    source: MediaInfo | None = None
    colours: list[str] = []  # dominant first, as #rrggbb
    placeholder: str | None = None  # ThumbHash/BlurHash string


class PartDone(Event, tag="jetmedia.asset.part.v1", frozen=True):
    data: PartData


class AssetReadyData(Struct, kw_only=True, frozen=True):
    job: JobId
    asset: JobId
    key: S3Key
    media: MediaKind
    outputs: list[OutputFile]


class AssetReady(Event, tag="jetmedia.asset.ready.v1", frozen=True):
    """Downstream users subscribe to this: every output of the asset is in S3."""

    data: AssetReadyData


# --- transcode (audio/video) ------------------------------------------------------------


class TranscodeRequestedData(Struct, kw_only=True, frozen=True):
    job: JobId
    asset: JobId
    bucket: str
    key: S3Key
    media: MediaKind = "video"  # upload's guess from magic bytes; the stage decides from a probe
    presets: list[str] | None = None  # transcode presets to make; default: the configured ones
    export: ExportItemRef | None = None  # set: one item of an export's "mp3"/"opus" transform


class TranscodeRequested(Event, tag="jetmedia.transcode.requested.v1", frozen=True):
    """Audio/video work for the transcode stage (outputs at `transcodes/{asset}/{preset}.{ext}`)."""

    data: TranscodeRequestedData


# --- export flow (ZIP of many objects) ---------------------------------------------------


class ExportItem(Struct, kw_only=True, frozen=True):
    key: S3Key
    name: str | None = None  # path inside the archive; default: from the key (always sanitised, unique)


class ExportRequestedData(Struct, kw_only=True, frozen=True):
    keys: list[S3Key] = []  # objects to export, in this order
    items: list[ExportItem] = []  # the same with chosen names (after `keys`)
    prefix: str | None = None  # every object under this prefix (after `items`)
    bucket: str | None = None  # where the sources are; default: JETMEDIA_BUCKET
    job_id: JobId | None = None  # default: the event id
    name: str | None = None  # archive file name (without .zip); default: export-{job}
    # per-item transform: "original" (as stored), "mp3" / "opus" (audio and video -> that audio
    # preset), "display" (images -> 1600 px WebP); names get the output's extension, and a source
    # the transform cannot apply to is listed in the manifest (with the reason), not exported
    transform: str = "original"
    compression: Literal["auto", "store", "deflate"] = "auto"  # auto: store what does not compress
    # priority lane of every step of this job (README "Priority lanes"); default: bulk
    priority: Priority | None = None
    callback_url: CallbackUrl | None = None  # POSTed each final event, signed (README "Webhooks")


class ExportRequested(Event, tag="jetmedia.export.requested.v1", frozen=True):
    """A producer asks for one ZIP of many objects; progress and the URL are in the job record."""

    id: ProducerEventId
    data: ExportRequestedData


class ChunkRequestedData(Struct, kw_only=True, frozen=True):
    job: JobId
    chunk: int  # 0-based; the job record says how many there are
    bucket: str
    items: list[ExportItem]  # names already sanitised and unique across the export
    transform: str = "original"  # the request's per-item transform (names already carry its extension)


class ChunkRequested(Event, tag="jetmedia.export.chunk.v1", frozen=True):
    """Internal: check one chunk (<= 100 files / <= 50 MB) of an export's sources."""

    data: ChunkRequestedData


class ExportFinalizeData(Struct, kw_only=True, frozen=True):
    job: JobId
    chunks: int


class ExportFinalize(Event, tag="jetmedia.export.finalize.v1", frozen=True):
    """Internal: every chunk is checked; stream the archive."""

    data: ExportFinalizeData


class ExportFile(Struct, kw_only=True, frozen=True):
    name: str  # download file name
    key: S3Key
    bytes: int
    files: int  # members from the sources (README.txt / manifest.json not counted)
    url: str | None = None


class ExportReadyData(Struct, kw_only=True, frozen=True):
    job: JobId
    url: str  # the archive, or the index of the parts of a large export
    expires: datetime
    files: int
    bytes: int  # archive bytes, all parts
    parts: list[ExportFile]
    missing: list[str] = []  # first missing source keys (all are in manifest.json)
    missing_count: int = 0


class ExportReady(Event, tag="jetmedia.export.ready.v1", frozen=True):
    """Downstream users subscribe to this: the archive is in S3 and downloadable until `expires`."""

    data: ExportReadyData


class CancelRequestedData(Struct, kw_only=True, frozen=True):
    job: JobId
    reason: str | None = None


class CancelRequested(Event, tag="jetmedia.job.cancel.v1", frozen=True):
    """Stop a job: work stops at the next file boundary and leaves nothing behind."""

    data: CancelRequestedData


# --- failure ----------------------------------------------------------------------------


class DeadLetterData(Struct, kw_only=True, frozen=True):
    """Evolution: fields after `job` were added later and have defaults, so letters written before
    them still decode (as UTF-8 originals, whole)."""

    stage: str
    error_class: str
    error: str
    permanent: bool
    delivery_count: int
    stream: str
    stream_seq: int
    original_subject: str
    original: str  # the original payload: UTF-8 text, or base64 (see original_encoding)
    job: str | None = None
    original_encoding: Literal["utf-8", "base64"] = "utf-8"  # base64 when not valid UTF-8 or too big as text
    original_size: int | None = None  # bytes of the whole original payload
    original_sha256: str | None = None  # hex digest of the whole original payload
    original_truncated: bool = False  # `original` holds only the first bytes (the letter must fit)

    def original_payload(self) -> bytes:
        """The original bytes (only the first ones when `original_truncated`)."""
        if self.original_encoding == "base64":
            return base64.b64decode(self.original)
        return self.original.encode()


def stored_original(payload: bytes, budget: int) -> dict[str, Any]:
    """The DeadLetterData fields that carry `payload` in at most `budget` bytes of JSON.

    Valid UTF-8 that stays within the budget once JSON-escaped is kept as text (readable in
    `nats stream view`); anything else is base64, truncated to what fits. Size and sha256 are
    always of the whole payload, so a truncated original can still be matched to its source."""
    fields: dict[str, Any] = {"original_size": len(payload), "original_sha256": hashlib.sha256(payload).hexdigest()}
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(_encoder.encode(text)) <= budget:
        return {**fields, "original": text, "original_encoding": "utf-8"}
    keep = max(budget - 2, 0) // 4 * 3  # base64: 4 characters per 3 bytes, plus the quotes
    return {**fields, "original": base64.b64encode(payload[:keep]).decode("ascii"), "original_encoding": "base64",
            "original_truncated": keep < len(payload)}


class DeadLetter(Event, tag="jetmedia.dlq.v1", frozen=True):
    data: DeadLetterData


class JobFailedData(Struct, kw_only=True, frozen=True):
    job: JobId
    stage: str
    error: str


class JobFailed(Event, tag="jetmedia.job.failed.v1", frozen=True):
    """A job ended failed; `data.error` is the reason (the job record keeps every attempt's)."""

    data: JobFailedData


class JobEndedData(Struct, kw_only=True, frozen=True):
    job: JobId
    stage: str  # where the job was when it ended
    reason: str | None = None


class JobCancelled(Event, tag="jetmedia.job.cancelled.v1", frozen=True):
    """A job was cancelled (jetmedia.job.cancel.v1): nothing more will happen to it unless it is re-run."""

    data: JobEndedData


class JobExpired(Event, tag="jetmedia.job.expired.v1", frozen=True):
    """An export's download window passed: its archive is deleted and its URL no longer works."""

    data: JobEndedData


class EventRejectedData(Struct, kw_only=True, frozen=True):
    """What jetmedia could tell of a message it refused, when no job record can carry the answer."""

    reason: str  # with the field path for a schema mismatch (`data.key: required`)
    stage: str
    original_subject: str
    original_id: str | None = None  # the refused message's `id`, when it had a string one
    original_type: str | None = None  # its `type`, when it had a string one
    job: str | None = None  # the job it named, when that is no valid job id (so no record has it)
    dead_letter: str  # id of the dead letter that holds the original (`jetmedia dlq`)


class EventRejected(Event, tag="jetmedia.event.rejected.v1", frozen=True):
    """A message was refused and names no job that could record it: the answer a producer gets
    for bytes that are not JSON, a wrong type, or a job id that is not one."""

    data: EventRejectedData


# --- the union --------------------------------------------------------------------------

AnyEvent = (
    AssetUploaded | VariantRequested | TranscodeRequested | PartDone | AssetReady | DeadLetter | JobFailed
    | ExportRequested | ChunkRequested | ExportFinalize | ExportReady | CancelRequested
    | JobCancelled | JobExpired | EventRejected
)
"""Everything `decode` accepts. Add a new event type here, then run `jetmedia schemas`."""

_decoder = msgspec.json.Decoder(AnyEvent)
_encoder = msgspec.json.Encoder()


def decode(payload: bytes) -> AnyEvent:
    return _decoder.decode(payload)


def encode(event: Any) -> bytes:
    return _encoder.encode(event)


# --- ids --------------------------------------------------------------------------------

_KEY_SAFE = re.compile(JOB_ID_PATTERN)


def new_id() -> str:
    return uuid.uuid4().hex


def derived_id(job: str, stage: str, item: str = "") -> str:
    """Id of a message caused by (job, stage, item): a redelivered handler re-emits the same id,
    so the stream's duplicate window drops the copy."""
    return f"{job}:{stage}:{item}" if item else f"{job}:{stage}"


def is_job_id(candidate: str) -> bool:
    """Whether `candidate` may name a job (a JobId, and a key NATS KV accepts)."""
    return len(candidate) <= JOB_ID_MAX and _KEY_SAFE.match(candidate) is not None


def job_of(event: AnyEvent) -> str | None:
    """Which job an event belongs to, if any; producers' events may not say."""
    match event:
        case AssetUploaded(data=data):
            return data.job_id or event.id
        case ExportRequested(data=data):
            return data.job_id or event.id
        case CancelRequested():
            return None  # about a job, not part of its work: never skipped or stopped as that job's work
        case _:
            return event.subject


def callback_problem(url: str) -> str | None:
    """Why a `callback_url` cannot be used (what the schema cannot say: a port out of range, no
    host), or None. Where it resolves to is checked when it is called (services/notify). The
    reason quotes the URL as `url_shown` does: it goes into the job record and the log."""
    flaw = callback_flaw(url)
    return None if flaw is None else f"callback_url {url_shown(url)[:200]!r} {flaw}"


def callback_flaw(url: str) -> str | None:
    """`callback_problem` without the URL: what is wrong with it ("names port 0"), for a caller
    that quotes the URL as it was typed (the CLI)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL with a host"
    if port == 0:
        return "names port 0"
    return None


def url_shown(url: str) -> str:
    """A URL as records, logs and letters show it: scheme, host, port and path only (no
    `user:password@`, query or fragment: they may carry a receiver's credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return (f"{parts.scheme}://{host}" if parts.scheme or host else "") + parts.path  # "notaurl" as it came
    except ValueError:
        return url.partition("://")[0][:20] + "://(not a valid URL)"


# --- refused messages -------------------------------------------------------------------

PRODUCER_REQUESTS: dict[str, str] = {  # type -> job kind, for the events that start a job
    "jetmedia.asset.uploaded.v1": "asset",
    "jetmedia.export.requested.v1": "export",
}
REQUEST_SUBJECTS: dict[str, str] = {UPLOAD_ASSET: "asset", UPLOAD_EXPORT: "export"}
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_INVALID = re.compile(r"^Invalid value (?P<value>.*)$", re.DOTALL)


def explain(exc: msgspec.MsgspecError | RecursionError) -> str:
    """Why a payload is not a jetmedia event, in a producer's terms: `not JSON (...)` for bytes
    that do not parse, else `field.path: what is wrong` built from the path msgspec reports
    (`data.key: required`, `data.key: expected str, got int`, `type: unknown event type ...`)."""
    if isinstance(exc, RecursionError):
        return "not JSON this decoder can read: nested too deeply"
    if not isinstance(exc, msgspec.ValidationError):  # ValidationError is a DecodeError: test it first
        return f"not JSON ({exc})"
    found = _AT.match(str(exc))
    what, path = (found["what"], (found["path"] or "").lstrip(".")) if found else (str(exc), "")
    field = path or "(the event)"
    if missing := _MISSING.match(what):
        return f"{path + '.' if path else ''}{missing['field']}: required"
    if expected := _EXPECTED.match(what):
        return f"{field}: expected {expected['want']}, got {expected['got']}"
    if path == "type" and (invalid := _INVALID.match(what)):
        return f"type: unknown event type {invalid['value']} (schemas/ lists them)"
    if "matching regex" in what and "a-zA-Z0-9" in what:
        return f"{field}: not a job id ({JOB_ID_RULE})"
    if "matching regex" in what and "[hH][tT]" in what:
        return f"{field}: not an http(s) URL (http:// or https://, a host, no user:password@)"
    what = what.replace("`", "")
    return f"{field}: {what[:1].lower()}{what[1:]}"


class Claim(Struct, frozen=True):
    """What a refused payload says about itself, read leniently (any JSON object)."""

    id: str | None = None
    type: str | None = None
    job: str | None = None  # the job a producer's request names (`data.job_id`, else `id`), if any
    kind: str = "asset"


_lenient = msgspec.json.Decoder()


def claim_of(payload: bytes, subject: str) -> Claim:
    """The id, type and job a payload claims, for answering it when it does not decode.

    Only a producer's request (by its `type`, or by its subject when the type is unusable) names
    a job: `data.job_id` when present, else `id`. A job id that is no valid job id is still
    reported (`Claim.job`), and the caller decides not to file a record under it."""
    try:
        doc = _lenient.decode(payload)
    except Exception:  # not JSON, nested too deeply: it claims nothing
        return Claim()
    if not isinstance(doc, dict):
        return Claim()
    event_id = doc.get("id") if isinstance(doc.get("id"), str) else None
    kind = doc.get("type") if isinstance(doc.get("type"), str) else None
    request = PRODUCER_REQUESTS.get(kind or "") or (REQUEST_SUBJECTS.get(subject) if kind not in _TAGS else None)
    if request is None:
        return Claim(id=_short(event_id), type=_short(kind))
    data = doc.get("data")
    # `"job_id": null` is the default (our own encoder writes it): the event id names the job then
    named = data.get("job_id") if isinstance(data, dict) and data.get("job_id") is not None else event_id
    job = named if isinstance(named, str) else None
    return Claim(id=_short(event_id), type=_short(kind), job=_short(job), kind=request)


def _short(text: str | None, limit: int = 256) -> str | None:
    return None if text is None else text[:limit]


_TAGS = frozenset(str(cls.__struct_config__.tag) for cls in typing.get_args(AnyEvent))
