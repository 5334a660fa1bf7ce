"""What a failed GET of a job's source object means, said the same way by every stage.

Stages GET a source without a HEAD first (a HEAD per object cost a round trip and ~1 ms of the
event loop: bench/variant.py); only when the GET fails does a HEAD tell a missing or empty object
(S3 answers a range of an empty one with 416) from a fault worth retrying."""

from __future__ import annotations

from typing import NoReturn

from botocore.exceptions import ClientError

from .errors import is_transient
from .runtime import Context, Reject


async def explain_failed_get(ctx: Context, exc: ClientError, bucket: str, key: str) -> NoReturn:
    """Raise what the failed GET means: the transient error as it came (the runtime retries it),
    `Reject` for an object that does not exist or is empty, otherwise the error itself."""
    if not is_transient(exc):
        where = f"s3://{bucket}/{key}"
        info = await ctx.storage.head(key, bucket)
        if info is None:
            raise Reject(f"source object {where} does not exist") from None
        if info.size == 0:
            raise Reject(f"source object {where} is empty (0 bytes)") from None
    raise exc
