"""stream-zip in a thread of its own, fed and drained through bounded queues.

stream-zip's async wrapper runs its (synchronous) writer in the default executor and hops to the
event loop and back for every input piece and every output chunk, so the writer and the loop
took turns instead of working at once, and the manifest's sha256 ran on the loop too. Here the
writer thread only waits when its inbox is empty or its outbox is full:

- the loop feeds each member's pieces into a bounded inbox (a few pieces: the read-ahead
  upstream holds the rest);
- the thread hashes them (`seen`: the manifest's sha256) and lets stream-zip check the CRC-32
  it was given (or deflate): hashlib and zlib release the GIL, so this runs beside the loop, on
  the other core;
- the loop takes the output into the multipart upload in batches of ~4 MiB (one wake-up each:
  on a loaded machine every hand-over between threads can wait for the scheduler);
- given the upload's `part_size`, the thread also hashes each part for SigV4 (`part_sha256`, read
  by `MultipartUpload`): each output block right after stream-zip made it, while it is still in
  cache from the manifest's hash and the CRC check. On the loop, ~8 MiB later, the same hash cost
  ~0.3 CPU s/GB more (2 cores shared with the S3 server: client CPU per GB is throughput).

The ZIP itself is stream-zip's, unchanged. A `Built` entry (the manifest) is made in the thread
when the writer reaches it, after every member before it has been hashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stream_zip import Method, stream_zip

_END = object()  # no more entries / no more parts
_MEMBER_END = object()  # no more pieces of this member
_STOP = object()  # the loop gave up: the thread unwinds


class _Stopped(Exception):
    pass


@dataclass
class Streamed:
    """A member whose bytes come from the loop; `seen` runs in the writer thread per piece."""

    name: str
    modified: datetime
    mode: int
    method: Method
    pieces: AsyncIterator[bytes]
    seen: Callable[[bytes], None] | None = None
    tag: Any = None


@dataclass
class Built:
    """A member made in the writer thread when it is reached: `build()` -> (method, bytes)."""

    name: str
    modified: datetime
    mode: int
    build: Callable[[], tuple[Method, bytes]]
    tag: Any = None


@dataclass
class _Failed:
    error: BaseException


class _Parts:
    """The output cut every `size` bytes, each part hashed as its blocks go by. A block that
    crosses a part's end is split there (a copy, once per part), so a `MultipartUpload` fed these
    blocks ends its parts at the same offsets: part n is bytes [(n-1)*size, n*size)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.number = 1
        self.filled = 0
        self.sha256 = hashlib.sha256()
        self.digests: dict[int, str] = {}  # written here, popped by the loop

    def cut(self, block: bytes) -> Iterator[bytes]:
        while block:
            room = self.size - self.filled
            piece, block = (block, b"") if len(block) <= room else (block[:room], block[room:])
            self.sha256.update(piece)
            self.filled += len(piece)
            if self.filled == self.size:  # known before the loop gets this part's last byte
                self._seal()
            yield piece

    def end(self) -> None:
        if self.filled or self.number == 1:  # the last, shorter part (an empty output is one empty part)
            self._seal()

    def _seal(self) -> None:
        self.digests[self.number] = self.sha256.hexdigest()
        self.number += 1
        self.filled = 0
        self.sha256 = hashlib.sha256()


class ZipThread:
    """Write `entries` as one ZIP; iterate `parts()` for the output, in pieces of `chunk` bytes
    at most (shorter where a member starts, or where an upload part of `part_size` ends)."""

    def __init__(self, entries: AsyncIterator[Streamed | Built], *, chunk: int, inbox_pieces: int = 4,
                 batch_bytes: int = 4 * 1024 * 1024, part_size: int | None = None) -> None:
        self.entries = entries
        self.chunk = chunk
        self.batch_bytes = batch_bytes
        self._parts = _Parts(part_size) if part_size else None
        self.current: Any = None  # the tag of the member the thread is writing (for error messages)
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._room = asyncio.Semaphore(inbox_pieces)
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._out_slots = threading.Semaphore(1)  # one batch waiting for the loop, one being gathered
        self._stopping = False
        self._loop = asyncio.get_running_loop()

    def part_sha256(self, number: int) -> str | None:
        """The SHA-256 (hex) of upload part `number` (from 1) of the output, once the thread has
        passed its end; None without a `part_size` (or for a part not seen yet)."""
        return self._parts.digests.pop(number, None) if self._parts is not None else None

    async def parts(self) -> AsyncIterator[bytes]:
        feeder = asyncio.create_task(self._feed(), name="zip feeder")
        thread = threading.Thread(target=self._write, name="zip-writer", daemon=True)
        thread.start()
        try:
            while True:
                item = await self._outbox.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                for block in item:
                    yield block
                self._out_slots.release()  # only now: the caller has handed the batch on (memory)
        finally:
            self._stopping = True
            self._inbox.put(_STOP)
            self._out_slots.release()
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
            await asyncio.to_thread(thread.join, 30)

    # --- the loop side -------------------------------------------------------------------

    async def _feed(self) -> None:
        try:
            async for entry in self.entries:
                self._inbox.put(entry)
                if isinstance(entry, Built):
                    continue
                async for piece in entry.pieces:
                    await self._room.acquire()
                    self._inbox.put(piece)
                self._inbox.put(_MEMBER_END)
            self._inbox.put(_END)
        except BaseException as exc:
            self._outbox.put_nowait(_Failed(exc))
            self._inbox.put(_STOP)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            with contextlib.suppress(BaseException):
                await self.entries.aclose()  # type: ignore[attr-defined]

    # --- the writer thread -----------------------------------------------------------------

    def _write(self) -> None:
        try:
            batch: list[bytes] = []
            size = 0
            cut = self._parts.cut if self._parts is not None else _whole
            for block in stream_zip(self._members(), chunk_size=self.chunk):
                for piece in cut(block):
                    batch.append(piece)
                    size += len(piece)
                if size >= self.batch_bytes:  # one wake-up of the loop per batch, not per block
                    self._emit(batch)
                    batch, size = [], 0
            if self._parts is not None:
                self._parts.end()  # before the last batch: its part's hash is there when the loop sends it
            if batch:
                self._emit(batch)
            self._emit(_END)
        except _Stopped:
            pass
        except BaseException as exc:  # ZipIntegrityError and the like: raised by parts()
            with contextlib.suppress(RuntimeError):  # the loop is gone
                self._loop.call_soon_threadsafe(self._outbox.put_nowait, _Failed(exc))

    def _emit(self, item: object) -> None:
        self._out_slots.acquire()
        if self._stopping:
            raise _Stopped
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, item)

    def _take(self) -> Any:
        item = self._inbox.get()
        if item is _STOP or self._stopping:
            raise _Stopped
        return item

    def _members(self) -> Iterator[tuple[str, datetime, int, Method, Iterator[bytes]]]:
        while (entry := self._take()) is not _END:
            self.current = entry.tag
            if isinstance(entry, Built):
                method, data = entry.build()
                yield entry.name, entry.modified, entry.mode, method, iter((data,))
            else:
                yield entry.name, entry.modified, entry.mode, entry.method, self._pieces(entry)

    def _pieces(self, entry: Streamed) -> Iterator[bytes]:
        while (piece := self._take()) is not _MEMBER_END:
            self._loop.call_soon_threadsafe(self._room.release)
            if entry.seen is not None:
                entry.seen(piece)
            yield piece


def _whole(block: bytes) -> Iterator[bytes]:
    yield block
