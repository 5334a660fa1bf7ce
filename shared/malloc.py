"""One glibc malloc policy for every jetmedia process: big buffers reused, not mapped afresh.

By default glibc's mmap threshold follows the biggest block freed (up to 32 MiB) and the heap top
is trimmed at twice that, so a process's buffer sizes decide whether a 1-8 MiB buffer comes from
a heap (reused) or from a fresh mapping whose every 4 KiB page is faulted in and zeroed (~1 µs
each). Both stages that move big buffers measured the second case:

- exports stream gigabytes in 0.25-1 MiB pieces: with a fixed 256 KiB threshold every socket
  read and every piece was mapped afresh, 1.2 million faults and ~0.3 s of CPU per GB for each
  copy of the data (docs/benchmarks.md, Export);
- a 1600 px variant in memory is 5-7 MB: each one cost ~3,000 faults and ~5 ms of kernel CPU
  per photo (docs/benchmarks.md, Variant).

The policy: blocks under 8 MiB come from the heaps and are reused (an export's 8 MiB and bigger
part buffers are still mapped once per upload, and reused by it), and the heaps are not trimmed
below 64 MiB of free top. What each stage holds at once is bounded (read-ahead budget, queues,
images in flight), so RSS stays flat at its high-water mark. It is set once per process, by
whichever stage needs it first; both need the same values, so the order does not matter.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

MMAP_THRESHOLD = 8 * 1024 * 1024  # bytes: smaller blocks come from malloc's heaps and are reused
TRIM_THRESHOLD = 64 * 1024 * 1024  # bytes of free heap top kept mapped

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


@functools.cache
def reuse_big_buffers() -> None:
    """Apply the policy (once; a no-op outside glibc)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
