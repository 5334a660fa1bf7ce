"""What a failed GET of a job's source object means, said the same way by every stage.

Stages GET a source without a HEAD first (a HEAD per object cost a round trip and ~1 ms of the
event loop: bench/variant.py); only when the GET fails does a HEAD tell a missing or empty object
(S3 answers a range of an empty one with 416) from a fault worth retrying."""

from __future__ import annotations

from typing import NoReturn

from botocore.exceptions import ClientError

from .errors import is_permanent, is_transient, s3_code
from .runtime import Context, Reject


async def explain_failed_get(ctx: Context, exc: ClientError, bucket: str, key: str) -> NoReturn:
    """Raise what the failed GET means: the transient error as it came (the runtime retries it),
    `Reject` for an object that does not exist or is empty, otherwise the error itself."""
    if not is_transient(exc):
        where = f"s3://{bucket}/{key}"
        try:
            info = await ctx.storage.head(key, bucket)
        except ClientError as head_exc:
            if is_permanent(exc) and not is_transient(head_exc):
                # S3 refuses the key itself (SeaweedFS: `..`/`.` segments, NUL), not this attempt:
                # no retry can read it, and "400 Bad Request" of a HEAD tells a producer nothing
                message = exc.response.get("Error", {}).get("Message", "")
                raise Reject(f"S3 refuses to read {where} ({s3_code(exc)}: {message}): no object can have "
                             "this key there") from None
            raise
        if info is None:
            raise Reject(f"source object {where} does not exist") from None
        if info.size == 0:
            raise Reject(f"source object {where} is empty (0 bytes)") from None
    raise exc
