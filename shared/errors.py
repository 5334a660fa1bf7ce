"""Which failures are worth a retry: one table, consulted by the runtime for every stage.

A handler raises whatever its libraries raise; the runtime asks `classify(exc)` once. Permanent
means "this input can never succeed" (a key NATS KV refuses, JSON nested too deep to decode, a
bucket name S3 clients refuse, a bucket that does not exist, a job with no record): retrying only
delays the answer and burns four deliveries, so the message is dead-lettered at once. Transient
means "the input is fine, the world around it is not": S3 5xx/throttling, connection and timeout
errors of S3 or NATS. Anything not in the table is treated as transient: an unexpected bug gets
its `max_deliver` tries (and a traceback in the log) before its dead letter, as before.

`Reject` and `Retry` (shared.runtime) say it explicitly and win over this table.
"""

from __future__ import annotations

from typing import Literal

import botocore.exceptions as boto
import msgspec
import nats.errors
import nats.js.errors
from botocore.exceptions import ClientError

Kind = Literal["permanent", "transient"]


class UnknownJob(KeyError):
    """A message names a job that has no record (never created, or already removed). A KeyError,
    so callers that treat "no record" as "a direct request, nothing to report into" still can."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument: quoted twice
        return str(self.args[0]) if self.args else "unknown job"


PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    UnknownJob,  # a part/finalize for a job with no record: no later delivery will create one
    nats.js.errors.InvalidKeyError,  # a job id KV refuses as a key
    RecursionError,  # JSON nested deeper than the decoder goes
    boto.ParamValidationError,  # the S3 client refuses the request itself (bucket name, key length)
    msgspec.DecodeError,
    msgspec.ValidationError,
    UnicodeError,
)

# S3 error codes that no retry can fix (the bucket or the object is not there, the request is bad).
# Not listed on purpose: NoSuchUpload (a concurrent redelivery aborted our multipart upload: the
# retry will start over), AccessDenied (often a credentials rollout that settles).
PERMANENT_S3_CODES: frozenset[str] = frozenset({
    "NoSuchBucket", "InvalidBucketName", "NoSuchKey", "KeyTooLongError", "InvalidArgument",
    "InvalidRange", "InvalidRequest", "MalformedXML", "EntityTooLarge",
})
TRANSIENT_S3_CODES: frozenset[str] = frozenset({
    "SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling", "ThrottlingException",
})

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, TimeoutError, socket errors
    boto.EndpointConnectionError,
    boto.ConnectionClosedError,
    boto.ReadTimeoutError,
    boto.ConnectTimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,  # no stream answers the subject (leader election, stream down)
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,  # "no response from stream": no stream (leader) takes the subject
)


def classify(exc: BaseException) -> Kind:
    """Permanent or transient, by the tables above (unknown: transient)."""
    if isinstance(exc, ClientError):
        code = s3_code(exc)
        if code in PERMANENT_S3_CODES:
            return "permanent"
        return "transient"
    if isinstance(exc, PERMANENT_TYPES):
        return "permanent"
    if isinstance(exc, TRANSIENT_TYPES):
        return "transient"
    return "transient"  # unknown: retried, then dead-lettered (see the module docstring)


def is_permanent(exc: BaseException) -> bool:
    return classify(exc) == "permanent"


def is_transient(exc: BaseException) -> bool:
    """S3 throttling and 5xx are worth a retry; 4xx are the caller's problem (S3 errors only:
    `describe` uses it to say "storage temporarily unavailable")."""
    if isinstance(exc, ClientError):
        status = s3_status(exc)
        return status >= 500 or status in (408, 429) or s3_code(exc) in TRANSIENT_S3_CODES
    return False


def s3_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def s3_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
