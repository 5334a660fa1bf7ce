"""Child processes that die with the process that started them.

A process killed with SIGKILL runs no cleanup: its nats-server, S3 server or ffmpeg would run on
as orphans (an ffmpeg encoding a long video for hours beside the redelivered job's new one).
Linux's parent-death signal (`prctl(PR_SET_PDEATHSIG)`), asked for in the child between fork and
exec, has the kernel send it instead. The signal comes when the *thread* that forked the child
ends: asyncio's subprocesses are forked from the event loop's thread, which lives as long as the
process. Elsewhere (no prctl) children are started as before.
"""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _resolve_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _resolve_prctl()  # resolved here: the child, between fork and exec, only calls it


def dying_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` that asks for `sig` when our process dies; None where there is no prctl
    (nothing runs in the child then). It calls one C function with constants: nothing to import,
    no lock to take between fork and exec, so it is safe beside the CPU pool's threads."""
    prctl, number = _PRCTL, int(sig)
    if prctl is None:
        return None

    def ask() -> None:
        prctl(PR_SET_PDEATHSIG, number)

    return ask
