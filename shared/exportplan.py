"""Export planning, pure: names inside the archive, chunks of work, parts of a large archive.

No I/O here, so property tests can throw anything at it. The names matter most: an archive is
unpacked by tools that trust them, so every name is made safe (no `..`, no absolute paths, no
backslashes, no control or bidi characters, no Windows device names, bounded length) and unique
(`a.jpg`, `a (1).jpg`), case-insensitively and so that no file is also a directory.

The KV side records (`{job}.chunk.{n}`) that the chunk stage writes (with a transform: the stage
that made the chunk's last item, shared/exportitems.py) and finalize reads are declared here too:
the stages share a format, not code.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime

from msgspec import Struct
from zlib_ng import zlib_ng

from .messages import ExportItem

ARCHIVES = "exports/"  # in jetmedia's bucket: `{job}/` holds an export's archives and its transforms' outputs
README = "README.txt"
MANIFEST = "manifest.json"
RESERVED = (README, MANIFEST)  # written by finalize at the archive's root

MAX_SEGMENT_BYTES = 200  # per path segment, UTF-8 (filesystems allow 255)
MAX_DEPTH = 16  # path segments; deeper names keep the first 15 and the file name
MAX_EXTENSION_BYTES = 16
FALLBACK = "file"

_SEPARATORS = re.compile(r"[/\\]+")
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
# zero-width non-joiner and joiner: invisible format characters, but letters of Persian and Indic
# words (`mi\u200cxaham`) and of emoji (`👩\u200d💻`); removed, those names changed. Kept inside a segment.
_JOINERS = "\u200c\u200d"
# every character whose compatibility form (NFKC) holds `/` or `\`: fullwidth `／` `＼`, `℅`...
# A tool that writes names through Windows' ANSI file API gets them "best-fit" to the ASCII
# separator, so `．．／．．／x` would unpack as `../../x` there.
_SEPARATOR_LOOKALIKES = frozenset("\u2100\u2101\u2105\u2106\ufe68\uff0f\uff3c")
_DEVICES = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"com{i}" for i in "0123456789¹²³"}  # 0: reserved too, per Windows' naming rules
    | {f"lpt{i}" for i in "0123456789¹²³"}
)


# --- names --------------------------------------------------------------------------------


def sanitise(name: str) -> str:
    """A relative, portable, harmless path for `name` (never empty). Idempotent."""
    for _ in range(8):  # each pass can only shorten; a fixpoint comes within two or three
        cleaned = _sanitise_once(name)
        if cleaned == name:
            return cleaned
        name = cleaned
    return name


def _sanitise_once(name: str) -> str:
    name = unicodedata.normalize("NFC", name)
    segments = [_segment(part) for part in _SEPARATORS.split(name)]
    segments = [s for s in segments if s]
    if not segments:
        return FALLBACK
    if len(segments) > MAX_DEPTH:
        segments = [*segments[: MAX_DEPTH - 1], segments[-1]]
    return "/".join(segments)


def _segment(part: str) -> str:
    text = "".join(_char(c) for c in part)
    while True:  # Windows drops trailing dots/spaces; `..` becomes empty; a joiner joins nothing at an end
        trimmed = text.strip(_JOINERS).lstrip(" ").rstrip(" .")
        if trimmed == text:
            break
        text = trimmed
    if not text or _only_dots(text):
        return ""
    if _is_device(text):
        text = "_" + text
    return _fit(text, MAX_SEGMENT_BYTES)


def _is_device(segment: str) -> bool:
    """`CON`, `nul.txt`, and `ＣＯＮ．txt` too (Windows' ANSI best-fit makes it `CON.txt`)."""
    forms = (segment,) if segment.isascii() else (segment, unicodedata.normalize("NFKC", segment))
    return any(form.split(".", 1)[0].rstrip(" ").casefold() in _DEVICES for form in forms)


def _char(c: str) -> str:
    category = unicodedata.category(c)
    if category in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in _JOINERS:  # controls, bidi overrides, lone surrogates
        return ""
    if c in _WINDOWS_FORBIDDEN or c in _SEPARATOR_LOOKALIKES:
        return "_"
    return c


def _only_dots(segment: str) -> bool:
    """`．．`, `‥`, `…`: dots only once compatibility forms become ASCII (the best-fit below)."""
    return not segment.isascii() and not unicodedata.normalize("NFKC", segment).strip(". ")


def _split_ext(segment: str) -> tuple[str, str]:
    stem, ext = posixpath.splitext(segment)
    if not stem or len(ext.encode()) > MAX_EXTENSION_BYTES:
        return segment, ""
    return stem, ext


def _fit(segment: str, limit: int, suffix: str = "") -> str:
    """`segment` with `suffix` before its extension, cut to `limit` UTF-8 bytes (extension kept)."""
    stem, ext = _split_ext(segment)
    room = limit - len(suffix.encode()) - len(ext.encode())
    if len(stem.encode()) > room:
        stem = stem.encode()[: max(room, 1)].decode("utf-8", errors="ignore").rstrip(" .") or "_"
    return (stem + suffix + ext).rstrip(" .") or "_"


def fold(name: str) -> str:
    """Names that collide on a case-insensitive filesystem fold to the same string: casefolded
    after uppercasing, as NTFS compares (`ı.txt` is `I.TXT` there, so it overwrote `i.txt`;
    casefold alone keeps the dotless ı apart)."""
    return unicodedata.normalize("NFC", name).upper().casefold()


class NameRegistry:
    """Hands out archive names: sanitised, unique (case-insensitively), never both file and dir."""

    def __init__(self, reserved: Iterable[str] = RESERVED) -> None:
        self.files: set[str] = {fold(name) for name in reserved}
        self.dirs: set[str] = set()
        # the last number handed out per wanted segment (as compared: folded): names are never
        # given back, so the next free one is never lower; counting from 1 each time made N copies
        # of one name, or N case variants of it, O(N^2) (10,000 keys named `a.jpg`: 80 s of the
        # upload stage's event loop, no heartbeats)
        self._last: dict[tuple[str, bool], int] = {}

    def add(self, wanted: str) -> str:
        parts = sanitise(wanted).split("/")
        for i in range(len(parts) - 1):  # a directory may not be named like an existing file
            parts[i] = self._free(parts[:i], parts[i], is_dir=True)
        parts[-1] = self._free(parts[:-1], parts[-1], is_dir=False)
        for i in range(1, len(parts)):
            self.dirs.add(fold("/".join(parts[:i])))
        name = "/".join(parts)
        self.files.add(fold(name))
        return name

    def _free(self, parent: list[str], segment: str, *, is_dir: bool) -> str:
        wanted = (fold("/".join([*parent, segment])), is_dir)
        n = self._last.get(wanted, 0)
        candidate = segment if n == 0 else _numbered(segment, n, is_dir=is_dir)
        while True:
            path = fold("/".join([*parent, candidate]))
            taken = path in self.files or (not is_dir and path in self.dirs)
            if not taken:
                self._last[wanted] = n
                return candidate
            n += 1
            candidate = _numbered(segment, n, is_dir=is_dir)


def _numbered(segment: str, n: int, *, is_dir: bool) -> str:
    return _fit(segment, MAX_SEGMENT_BYTES, f" ({n})") if not is_dir else _fit_dir(segment, n)


def _fit_dir(segment: str, n: int) -> str:
    suffix = f" ({n})"
    cut = segment.encode()[: MAX_SEGMENT_BYTES - len(suffix)].decode("utf-8", errors="ignore").rstrip(" .")
    return (cut or "_") + suffix


def unique_names(wanted: Iterable[str], reserved: Iterable[str] = RESERVED) -> list[str]:
    registry = NameRegistry(reserved)
    return [registry.add(name) for name in wanted]


def with_extension(name: str, ext: str) -> str:
    """`name` with its last segment's extension replaced by `ext` (`song.wav` -> `song.mp3`),
    or `ext` appended when it has none: the name of a transformed source inside the archive."""
    folder, _, last = name.rpartition("/")
    stem, old = posixpath.splitext(last)
    if not stem or not old or len(old.encode()) > MAX_EXTENSION_BYTES:
        stem = last
    return (folder + "/" if folder else "") + f"{stem}.{ext}"


def default_name(key: str, prefix: str | None) -> str:
    """The name a source gets when the producer chose none: its key below the export's prefix
    (the folder part of it), else the key's last segment."""
    if prefix:
        folder = prefix[: prefix.rfind("/") + 1]
        if key.startswith(folder) and len(key) > len(folder):
            return key[len(folder):]
    return key.rstrip("/").rsplit("/", 1)[-1] or key


# --- chunks and parts -------------------------------------------------------------------


def plan_runs(sizes: Sequence[int | None], max_files: int, max_bytes: int) -> list[range]:
    """Cut a sequence into consecutive runs of <= max_files items and <= max_bytes (unknown sizes
    count 0; one item bigger than max_bytes is a run of its own). Order is kept."""
    runs: list[range] = []
    start = count = total = 0
    for i, size in enumerate(sizes):
        size = size or 0
        if count and (count >= max_files or total + size > max_bytes):
            runs.append(range(start, i))
            start, count, total = i, 0, 0
        count += 1
        total += size
    if count:
        runs.append(range(start, len(sizes)))
    return runs


MAX_UPLOAD_PARTS = 10_000  # S3's limit of parts per multipart upload
UPLOAD_PART_MIN = 8 * 1024 * 1024  # below ~8 GB of archive, parts stay at 8 MiB


def archive_bound(sizes: Iterable[int], names_bytes: int = 0) -> int:
    """At most how many bytes a ZIP of sources of these sizes takes: each member stored or
    deflated (deflate may grow incompressible input by < 0.1 %), with its headers, Zip64 extras,
    data descriptor, central directory and manifest entry (< 4 KiB each beside the name), plus
    README and the end records. `names_bytes`: the members' names, UTF-8, all together."""
    total = 0
    for size in sizes:
        total += size + (size >> 10) + 4096
    return total + 3 * names_bytes + 64 * 1024


def upload_part_size(archive_bytes: int, smallest: int = UPLOAD_PART_MIN) -> int:
    """Multipart part size for an archive of at most `archive_bytes`: `smallest` up to ~8 GB,
    then as big as it takes to stay within S3's 10,000 parts (a whole MiB, 1 % kept spare)."""
    mib = 1024 * 1024
    needed = -(-archive_bytes // (MAX_UPLOAD_PARTS * 99 // 100))
    return max(smallest, -(-needed // mib) * mib)


def part_names(archive: str, parts: int) -> list[str]:
    """`name.zip`, or `name.part01.zip`... when an export is split."""
    if parts <= 1:
        return [f"{archive}.zip"]
    width = max(2, len(str(parts)))
    return [f"{archive}.part{i:0{width}d}.zip" for i in range(1, parts + 1)]


def archive_name(wanted: str | None, job: str) -> str:
    """A file name for the download: one safe segment, no `.zip` (added per part), not starting
    with a dot (`../..` made `.._.zip`, a file that browsers save and `ls` does not show)."""
    base = (wanted or f"export-{job}").removesuffix(".zip").removesuffix(".ZIP")
    segment = _segment(_segment(base.replace("/", "_").replace("\\", "_")).lstrip(". "))  # again: `.CON`
    return segment.replace('"', "_") or f"export-{job}"


# --- compression ------------------------------------------------------------------------

PROBE_BYTES = 64 * 1024


def compresses(sample: bytes, level: int = 1, threshold: float = 0.95) -> bool:
    """Whether deflating is worth it, judged from the object's first bytes: JPEG, MP4, MP3, ZIP...
    save nothing, so they are stored; text, JSON, TIFF, WAV are deflated."""
    sample = sample[:PROBE_BYTES]
    if len(sample) < 256:
        return len(sample) > 0 and sample.isascii()
    return len(zlib_ng.compress(sample, level)) < threshold * len(sample)


# --- KV side records ------------------------------------------------------------------


TRANSFORM_EXTENSIONS: dict[str, str | None] = {  # per-item transform -> extension of its output
    "original": None,  # the object as it is
    "mp3": "mp3",  # audio/video -> the transcode stage's mp3 preset
    "opus": "opus",  # audio/video -> its opus preset (Ogg)
    "display": "webp",  # images -> the variant stage's 1600 px WebP display preset
}


class SourceInfo(Struct, kw_only=True, frozen=True):
    key: str  # the object that goes into the archive (a transform's output, not the source)
    name: str
    size: int
    crc32: int | None = None  # from S3 when the object was uploaded with a CRC32 checksum
    etag: str | None = None
    bucket: str | None = None  # None: the chunk record's bucket (a transform's output may live elsewhere)
    source: str | None = None  # the requested key when `key` is a transform's output
    modified: datetime | None = None  # the source's Last-Modified: its file date in the archive


class Untransformed(Struct, kw_only=True, frozen=True):
    """A source that exists but the export's transform could not be applied to (an image under
    "mp3", a corrupt file): listed in the manifest with the reason, it does not fail the export."""

    key: str
    name: str
    reason: str


class ChunkRecord(Struct, kw_only=True, frozen=True):
    """What one chunk's sources came to (`{job}.chunk.{n}`): written by the chunk stage, or with a
    transform by the item that completed the chunk (`found` then holds the outputs)."""

    chunk: int
    bucket: str
    found: list[SourceInfo] = []
    missing: list[ExportItem] = []
    untransformed: list[Untransformed] = []


def chunk_key(job: str, n: int) -> str:
    return f"{job}.chunk.{n}"
