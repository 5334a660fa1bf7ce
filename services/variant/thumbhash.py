"""ThumbHash (Evan Wallace's format, https://evanw.github.io/thumbhash/): a ~25-byte placeholder
that a page decodes into a blurred preview before the real variant arrives. Alpha and aspect ratio
are part of the hash, unlike BlurHash.

A small pure-Python encoder (no package on PyPI is both maintained and pure Python). It works on a
tiny RGBA image (≤ 32 px here: the hash keeps at most 7 × 7 low frequencies, so a bigger input
adds cost, not detail) with separable cosine sums, so it takes about a millisecond. The decoders
(`average_rgba`, `aspect_ratio`) read the header back; tests use them to check the encoder.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from operator import mul


def encode(width: int, height: int, rgba: bytes | Sequence[int]) -> bytes:
    """ThumbHash bytes of a `width` × `height` RGBA image (rows of unpremultiplied 8-bit pixels)."""
    if not (0 < width <= 100 and 0 < height <= 100):
        raise ValueError(f"{width}x{height} does not fit in 100x100")
    n = width * height
    if len(rgba) != n * 4:
        raise ValueError(f"expected {n * 4} RGBA bytes, got {len(rgba)}")

    pixels = list(zip(rgba[0::4], rgba[1::4], rgba[2::4], rgba[3::4], strict=True))
    avg_r = avg_g = avg_b = avg_a = 0.0
    for red, green, blue, opacity in pixels:
        alpha = opacity / 255
        avg_r += alpha / 255 * red
        avg_g += alpha / 255 * green
        avg_b += alpha / 255 * blue
        avg_a += alpha
    if avg_a > 0:
        avg_r, avg_g, avg_b = avg_r / avg_a, avg_g / avg_a, avg_b / avg_a

    has_alpha = avg_a < n
    l_limit = 5 if has_alpha else 7  # fewer luminance terms when alpha needs room
    longest = max(width, height)
    lx = max(1, _round(l_limit * width / longest))
    ly = max(1, _round(l_limit * height / longest))

    # RGBA -> LPQA, composited over the average colour
    lum, p, q, a = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    for k, (red, green, blue, opacity) in enumerate(pixels):
        alpha = opacity / 255
        r = avg_r * (1 - alpha) + alpha / 255 * red
        g = avg_g * (1 - alpha) + alpha / 255 * green
        b = avg_b * (1 - alpha) + alpha / 255 * blue
        lum[k] = (r + g + b) / 3
        p[k] = (r + g) / 2 - b
        q[k] = r - g
        a[k] = alpha

    l_dc, l_ac, l_scale = _dct(width, height, lum, max(3, lx), max(3, ly))
    p_dc, p_ac, p_scale = _dct(width, height, p, 3, 3)
    q_dc, q_ac, q_scale = _dct(width, height, q, 3, 3)
    a_dc, a_ac, a_scale = _dct(width, height, a, 5, 5) if has_alpha else (1.0, [], 0.0)

    landscape = width > height
    header24 = (
        _round(63 * l_dc) | (_round(31.5 + 31.5 * p_dc) << 6) | (_round(31.5 + 31.5 * q_dc) << 12)
        | (_round(31 * l_scale) << 18) | (int(has_alpha) << 23)
    )
    header16 = (ly if landscape else lx) | (_round(63 * p_scale) << 3) | (_round(63 * q_scale) << 9) | (
        int(landscape) << 15
    )
    ac_start = 6 if has_alpha else 5
    ac = [*l_ac, *p_ac, *q_ac, *(a_ac if has_alpha else [])]
    out = bytearray(ac_start + (len(ac) + 1) // 2)
    out[0:3] = header24.to_bytes(3, "little")
    out[3:5] = header16.to_bytes(2, "little")
    if has_alpha:
        out[5] = _round(15 * a_dc) | (_round(15 * a_scale) << 4)
    for index, value in enumerate(ac):
        out[ac_start + (index >> 1)] |= _round(15 * value) << ((index & 1) << 2)
    return bytes(out)


def _dct(w: int, h: int, channel: list[float], nx: int, ny: int) -> tuple[float, list[float], float]:
    """DC, normalised AC terms (0..1) and their scale, for the triangle of low frequencies the
    format keeps. Separable: rows are projected on each x-cosine once, then summed along y."""
    cx_max = nx  # cx ranges over 0..nx-1 at most
    fx = [[math.cos(math.pi / w * cx * (x + 0.5)) for x in range(w)] for cx in range(cx_max)]
    fy = [[math.cos(math.pi / h * cy * (y + 0.5)) for y in range(h)] for cy in range(ny)]
    rows = [channel[y * w:(y + 1) * w] for y in range(h)]
    projected = [[sum(map(mul, row, fx[cx])) for row in rows] for cx in range(cx_max)]  # same order as a loop
    dc, ac, scale = 0.0, [], 0.0
    for cy in range(ny):
        cx = 0
        while cx * ny < nx * (ny - cy):
            f = sum(map(mul, projected[cx], fy[cy])) / (w * h)
            if cx or cy:
                ac.append(f)
                scale = max(scale, abs(f))
            else:
                dc = f
            cx += 1
    if scale > 0:
        ac = [0.5 + 0.5 / scale * v for v in ac]
    return dc, ac, scale


def to_text(thumbhash: bytes) -> str:
    """The form stored in job outputs and sent to pages: standard base64, padding kept."""
    return base64.b64encode(thumbhash).decode("ascii")


def from_text(text: str) -> bytes:
    return base64.b64decode(text)


def average_rgba(thumbhash: bytes) -> tuple[float, float, float, float]:
    """The average colour the hash encodes (each 0..1), as the reference decoder computes it."""
    header = int.from_bytes(thumbhash[0:3], "little")
    lum = (header & 63) / 63
    p = ((header >> 6) & 63) / 31.5 - 1
    q = ((header >> 12) & 63) / 31.5 - 1
    has_alpha = bool(header >> 23)
    a = (thumbhash[5] & 15) / 15 if has_alpha else 1.0
    b = lum - 2 / 3 * p
    r = (3 * lum - b + q) / 2
    g = r - q
    return (_clamp(r), _clamp(g), _clamp(b), a)


def aspect_ratio(thumbhash: bytes) -> float:
    """Approximate width / height of the source, from the hash alone."""
    has_alpha = bool(thumbhash[2] & 0x80)
    landscape = bool(thumbhash[4] & 0x80)
    stored = thumbhash[3] & 7
    lx = (5 if has_alpha else 7) if landscape else stored
    ly = stored if landscape else (5 if has_alpha else 7)
    return lx / ly


def has_alpha(thumbhash: bytes) -> bool:
    return bool(thumbhash[2] & 0x80)


def _round(v: float) -> int:
    """JavaScript's Math.round (half up), as the reference encoder rounds; Python rounds half to even."""
    return math.floor(v + 0.5)


def _clamp(v: float) -> float:
    return max(0.0, min(1.0, v))
