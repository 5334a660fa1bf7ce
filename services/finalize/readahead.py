"""Read the next export sources while the current one streams into the archive.

One GET at a time left the archive writer waiting for every source's first byte (~10 ms per
object on a local S3, more on a remote one: for 2-3 MiB files that was a fifth of the export).
Here each source gets its own reader task, opened in order ahead of the consumer, and the bytes
read but not yet consumed stay within a budget:

- a source is opened once the bytes still to pass before it (the rest of the current source and
  the whole of those opened ahead) are under the budget, and at most `max_open` ahead: a GET is
  never held open long unread (a 4 GiB source is followed by one that opens near its end);
- a reader ahead of the consumer reads its next piece only while everything buffered is under the
  budget; the current source's reader may always keep two pieces ready, so it never waits for
  the ones ahead of it to drain (no deadlock), and memory stays at about the budget plus one
  piece per open reader.

A source's error (a 404, a reset) is raised where the consumer reaches it, after the pieces read
before it. Leaving the context cancels every reader.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from shared.fasts3 import FastS3
from shared.storage import Storage


@dataclass(eq=False)
class _Source:
    key: str
    bucket: str
    size: int
    pieces: deque[bytes] = field(default_factory=deque)
    buffered: int = 0  # read, not yet taken
    taken: int = 0
    ended: bool = False
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None


class ReadAhead:
    """Stream `(key, bucket, size)` sources in order, reading ahead within `budget` bytes."""

    def __init__(self, storage: Storage, sources: Sequence[tuple[str, str, int]], *, budget: int, chunk: int,
                 max_open: int = 4, fast: FastS3 | None = None) -> None:
        self.storage = storage
        self.fast = fast
        self.budget = budget
        self.chunk = chunk
        self.max_open = max_open
        self._sources = [_Source(key, bucket, size) for key, bucket, size in sources]
        self._head = -1  # the source the consumer is on
        self._opened = 0  # sources [0, _opened) have a reader
        self._buffered = 0  # read and not yet taken, all sources
        self._event = asyncio.Event()

    def start(self) -> None:
        """Open the first sources (README goes into the archive meanwhile)."""
        self._open_more()

    async def __aenter__(self) -> ReadAhead:
        self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        tasks = [s.task for s in self._sources if s.task is not None and not s.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    @property
    def buffered(self) -> int:
        return self._buffered

    def next(self) -> AsyncIterator[bytes]:
        """The next source's bytes (its GET's error, if any, raised by the first `anext`).
        Whatever the previous source's stream left unread is dropped."""
        if self._head >= 0:
            self._drop(self._sources[self._head])
        self._head += 1
        if self._head >= len(self._sources):
            raise IndexError("no source left to read")
        self._open_more()
        return self._stream(self._sources[self._head])

    async def _stream(self, source: _Source) -> AsyncIterator[bytes]:
        while True:
            await self._until(lambda: bool(source.pieces) or source.ended)
            if source.pieces:
                piece = source.pieces.popleft()
                source.buffered -= len(piece)
                source.taken += len(piece)
                self._buffered -= len(piece)
                self._open_more()
                self._changed()
                yield piece
            elif source.error is not None:
                raise source.error
            else:
                return

    async def _read(self, source: _Source) -> None:
        body = self.storage.iter_bytes(source.key, source.bucket, chunk=self.chunk, fast=self.fast)
        try:
            async for piece in body:
                source.pieces.append(piece)
                source.buffered += len(piece)
                self._buffered += len(piece)
                self._changed()
                await self._until(lambda: self._may_read(source))
        except Exception as exc:  # handed to the consumer where it reaches this source
            source.error = exc
        finally:
            source.ended = True
            self._changed()
            with contextlib.suppress(Exception):
                await body.aclose()  # type: ignore[attr-defined]

    def _may_read(self, source: _Source) -> bool:
        if source.ended:  # dropped by the consumer
            return True
        current = self._head >= 0 and source is self._sources[self._head]
        return self._buffered < self.budget or (current and source.buffered < 2 * self.chunk)

    def _open_more(self) -> None:
        while self._opened < len(self._sources) and self._may_open(self._opened):
            source = self._sources[self._opened]
            source.task = asyncio.create_task(self._read(source), name=f"read-ahead {source.key}")
            self._opened += 1

    def _may_open(self, index: int) -> bool:
        if index <= self._head:
            return True
        first = max(self._head, 0)
        if index - first > self.max_open:
            return False
        before = sum(s.size - s.taken for s in self._sources[first:index])
        return before < self.budget

    def _drop(self, source: _Source) -> None:
        self._buffered -= source.buffered
        source.pieces.clear()
        source.buffered = 0
        if source.task is not None and not source.task.done():
            source.task.cancel()
        self._changed()

    def _changed(self) -> None:
        """Wake everyone waiting (each checks its own condition again)."""
        self._event.set()
        self._event = asyncio.Event()

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._event.wait()
