"""Camera RAW files that look like TIFF (DNG, NEF, CR2, ARW, PEF, ...): libvips' TIFF loader
reads their first image, which is the camera's thumbnail (NEF: 160×120), so the "display" variant
would silently be a postage stamp. They are told apart by what the first image directory says,
and refused with that reason instead. Pure byte parsing, no decoder: a few microseconds.
"""

from __future__ import annotations

import struct

NEW_SUBFILE_TYPE = 254  # bit 0 set: a reduced-resolution copy of another image in the file
MAKE = 271
DNG_VERSION = 50706
_MAX_ENTRIES = 4096  # a real first directory has a few dozen


def camera_raw(source: bytes) -> str | None:
    """What kind of camera RAW `source` is (e.g. "a Nikon RAW (NEF)"), or None for a TIFF image."""
    if len(source) < 16 or source[:4] not in (b"II*\x00", b"MM\x00*"):  # classic TIFF (not BigTIFF)
        return None
    order = "<" if source[:2] == b"II" else ">"
    if source[8:12] == b"CR\x02\x00":  # CR2 header after the TIFF one: "CR", version 2.0
        return "a Canon RAW (CR2)"
    (first,) = struct.unpack_from(order + "I", source, 4)
    tags = _directory(source, order, first)
    if DNG_VERSION in tags:
        return "a DNG camera RAW"
    subfile = tags.get(NEW_SUBFILE_TYPE)
    if subfile is not None and _inline_int(order, *subfile) & 1:
        make = _ascii(source, order, *tags[MAKE]) if MAKE in tags else ""
        return f"a camera RAW{f' ({make})' if make else ''}"
    return None


def _directory(source: bytes, order: str, offset: int) -> dict[int, tuple[int, int, bytes]]:
    """tag -> (type, count, the 4 value/offset bytes) of the directory at `offset`."""
    if offset + 2 > len(source):
        return {}
    (count,) = struct.unpack_from(order + "H", source, offset)
    tags: dict[int, tuple[int, int, bytes]] = {}
    for n in range(min(count, _MAX_ENTRIES)):
        at = offset + 2 + 12 * n
        if at + 12 > len(source):
            break
        tag, kind, number = struct.unpack_from(order + "HHI", source, at)
        tags[tag] = (kind, number, source[at + 8:at + 12])
    return tags


def _inline_int(order: str, kind: int, count: int, value: bytes) -> int:
    if kind == 3:  # SHORT
        return int(struct.unpack_from(order + "H", value)[0])
    return int(struct.unpack_from(order + "I", value)[0])  # LONG (NewSubfileType's type)


def _ascii(source: bytes, order: str, kind: int, count: int, value: bytes) -> str:
    if kind != 2 or count == 0:
        return ""
    if count <= 4:
        raw = value[:count]
    else:
        (offset,) = struct.unpack_from(order + "I", value)
        raw = source[offset:offset + min(count, 64)]
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
