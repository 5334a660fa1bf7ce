"""Every message on the bus: CloudEvents 1.0 structured JSON, one Struct per event type.

The CloudEvents `type` attribute is msgspec's tag, so `decode()` is a single tagged-union
decoder built once. Evolution rules (see README): new fields get defaults, types never
change, a breaking change is a new `type` with the next `.vN` suffix.

Producers outside Python need only schemas/ (generated from these classes by
`jetmedia schemas`), and the subject table in `SUBJECTS`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

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
DLQ_PREFIX = "jetmedia.dlq"

JobId = Annotated[str, Meta(pattern=r"^[-_=.a-zA-Z0-9]{1,200}$", description="KV-safe job id")]
S3Key = Annotated[str, Meta(min_length=1, max_length=1024, description="S3 object key")]
MediaKind = Literal["image", "audio", "video"]


def now() -> datetime:
    return datetime.now(UTC)


# --- envelope ----------------------------------------------------------------------------


class Event(Struct, kw_only=True, frozen=True, tag_field="type", omit_defaults=False):
    """CloudEvents 1.0 attributes shared by every message; `type` is the tag."""

    specversion: Literal["1.0"] = "1.0"
    id: Annotated[str, Meta(min_length=1, max_length=256)]
    source: Annotated[str, Meta(min_length=1)] = "jetmedia"
    time: datetime | None = None
    subject: str | None = None  # the job id, on every message jetmedia emits
    datacontenttype: Literal["application/json"] = "application/json"


# --- asset flow ------------------------------------------------------------------------


class AssetUploadedData(Struct, kw_only=True, frozen=True):
    key: S3Key
    bucket: str | None = None  # default: JETMEDIA_BUCKET
    job_id: JobId | None = None  # default: derived from the event id
    asset_id: JobId | None = None  # default: the job id
    presets: list[str] | None = None  # variant presets to make; default: all configured


class AssetUploaded(Event, tag="jetmedia.asset.uploaded.v1", frozen=True):
    """A producer says: this object landed in S3, make it web-ready."""

    data: AssetUploadedData


class VariantRequestedData(Struct, kw_only=True, frozen=True):
    job: JobId
    asset: JobId
    bucket: str
    key: S3Key
    part: str = "variant"  # the job part this work fills (`poster` for a video's frame)
    presets: list[str] | None = None


class VariantRequested(Event, tag="jetmedia.variant.requested.v1", frozen=True):
    data: VariantRequestedData


class MediaInfo(Struct, kw_only=True, frozen=True):
    """Facts about one source or output file; fields a kind of media lacks stay None."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    bytes: int | None = None


class OutputFile(Struct, kw_only=True, frozen=True):
    preset: str
    key: S3Key
    format: str
    bytes: int
    width: int | None = None
    height: int | None = None
    duration: float | None = None


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


# --- failure ----------------------------------------------------------------------------


class DeadLetterData(Struct, kw_only=True, frozen=True):
    stage: str
    error_class: str
    error: str
    permanent: bool
    delivery_count: int
    stream: str
    stream_seq: int
    original_subject: str
    original: str  # the original payload, as UTF-8 (undecodable bytes replaced)
    job: str | None = None


class DeadLetter(Event, tag="jetmedia.dlq.v1", frozen=True):
    data: DeadLetterData


class JobFailedData(Struct, kw_only=True, frozen=True):
    job: JobId
    stage: str
    error: str


class JobFailed(Event, tag="jetmedia.job.failed.v1", frozen=True):
    data: JobFailedData


# --- the union --------------------------------------------------------------------------

AnyEvent = AssetUploaded | VariantRequested | PartDone | AssetReady | DeadLetter | JobFailed
"""Everything `decode` accepts. Add a new event type here, then run `jetmedia schemas`."""

_decoder = msgspec.json.Decoder(AnyEvent)
_encoder = msgspec.json.Encoder()


def decode(payload: bytes) -> AnyEvent:
    return _decoder.decode(payload)


def encode(event: Any) -> bytes:
    return _encoder.encode(event)


# --- ids --------------------------------------------------------------------------------

_KEY_SAFE = re.compile(r"^[-_=.a-zA-Z0-9]{1,200}$")


def new_id() -> str:
    return uuid.uuid4().hex


def derived_id(job: str, stage: str, item: str = "") -> str:
    """Id of a message caused by (job, stage, item): a redelivered handler re-emits the same id,
    so the stream's duplicate window drops the copy."""
    return f"{job}:{stage}:{item}" if item else f"{job}:{stage}"


def safe_job_id(candidate: str) -> str:
    """A producer's event id as a KV key: kept when already safe, else hashed (stable)."""
    if _KEY_SAFE.match(candidate) and not candidate.startswith(".") and not candidate.endswith("."):
        return candidate
    return "j" + hashlib.sha256(candidate.encode()).hexdigest()[:32]


def job_of(event: AnyEvent) -> str | None:
    """Which job an event belongs to, if any; producers' events may not say."""
    match event:
        case AssetUploaded(data=data):
            return data.job_id or safe_job_id(event.id)
        case _:
            return event.subject
