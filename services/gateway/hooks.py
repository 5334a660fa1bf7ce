"""S3 event notifications (the `Records[].s3` JSON that AWS S3, MinIO and Ceph RGW POST to a
webhook) turned into asset jobs.

Only `ObjectCreated:*` records for objects under JETMEDIA_GATEWAY_HOOK_PREFIXES (and the posting
token's prefix) start a job; others are counted as skipped. Object keys arrive URL-encoded
(`+` for a space), as S3 sends them. The event id, and so the job id, is derived from
bucket/key/eTag: a notification delivered twice (S3 retries, two webhook targets) is one job, and
a new upload to the same key (a new eTag) is a new job.
"""

from __future__ import annotations

import hashlib
import urllib.parse

import msgspec


class S3Object(msgspec.Struct, kw_only=True, frozen=True):
    key: str
    eTag: str | None = None
    size: int | None = None
    sequencer: str | None = None


class S3Bucket(msgspec.Struct, kw_only=True, frozen=True):
    name: str


class S3Entity(msgspec.Struct, kw_only=True, frozen=True):
    bucket: S3Bucket
    object: S3Object


class S3Record(msgspec.Struct, kw_only=True, frozen=True):
    eventName: str
    s3: S3Entity
    eventSource: str | None = None


class S3Notification(msgspec.Struct, kw_only=True, frozen=True):
    """The standard notification body; other fields (userIdentity, requestParameters, ...) are ignored.

    `Type`, `SubscribeURL` and `detail-type` are read only to recognise the envelopes this is
    not: an Amazon SNS message (its `Type`) or an EventBridge event (`detail-type`), which would
    otherwise decode as a notification without records and be answered 202, doing nothing."""

    Records: list[S3Record] = []
    Type: str | None = None
    SubscribeURL: str | None = None
    detail_type: str | None = msgspec.field(default=None, name="detail-type")


def envelope_problem(note: S3Notification) -> str | None:
    """Why a body that is not S3's own notification cannot start jobs, and what to set up
    instead; None: it is one (an empty one too: S3's `s3:TestEvent`)."""
    if note.Records:
        return None
    if note.Type == "SubscriptionConfirmation":
        return ("an Amazon SNS subscription confirmation: jetmedia does not fetch URLs named in a request; "
                f"confirm the subscription by opening its SubscribeURL once ({note.SubscribeURL}), "
                "and turn on raw message delivery for it so S3's notification arrives as posted")
    if note.Type is not None:
        return (f"an Amazon SNS {note.Type} envelope: turn on raw message delivery for this subscription, "
                "so S3's notification (its Records) is posted as it is")
    if note.detail_type is not None:
        return (f"an EventBridge event ({note.detail_type!r}): have S3 notify this URL directly (the Records "
                "shape), or have the rule's API destination POST each object's key to /v1/assets")
    return None


class HookJob(msgspec.Struct, kw_only=True, frozen=True):
    bucket: str
    key: str
    job_id: str
    status_url: str


class HookResult(msgspec.Struct, kw_only=True, frozen=True):
    jobs: list[HookJob]  # one per created object accepted (a re-delivery names the same job)
    skipped: list[str]  # why each other record started nothing


def object_key(record: S3Record) -> str:
    """The key as stored: S3 URL-encodes it in notifications, a space as `+`."""
    return urllib.parse.unquote_plus(record.s3.object.key)


def event_id(bucket: str, key: str, etag: str | None) -> str:
    """A job id (KV-safe) that a re-delivered notification of the same object version repeats."""
    digest = hashlib.sha256(f"{bucket}\n{key}\n{(etag or '').strip(chr(34))}".encode()).hexdigest()
    return f"s3-{digest[:40]}"


def hook_prefixes(setting: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in setting.split(",") if part.strip())
