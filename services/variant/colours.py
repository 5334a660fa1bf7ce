"""Dominant colour and a small palette, as the systems we replace stored them (`#rrggbb`).

Works on a tiny sRGB image (≤ 64 px, derived from the smallest variant, so it costs about a
millisecond): pixels are binned on a 3-bit-per-channel grid (512 bins), the most populated bins become
candidates with their mean colour, and candidates closer than a perceptual-ish distance to one
already taken are folded in; bins under 3 % of the pixels are ignored. Transparent pixels do not
vote. Deterministic: ties break on the bin index, so a redelivery stores the same colours.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

MIN_DISTANCE = 48.0  # redmean distance (0..~765) below which two colours count as the same
PALETTE_SIZE = 5
MIN_SHARE = 0.03  # a colour on fewer pixels than this (edges blended by the resize) is no palette colour


def palette(pixels: bytes | Sequence[int], bands: int, size: int = PALETTE_SIZE) -> list[str]:
    """Up to `size` colours, dominant first, from interleaved 8-bit pixels with 3 or 4 bands."""
    if bands not in (3, 4):
        raise ValueError(f"palette needs RGB or RGBA pixels, got {bands} bands")
    counts: dict[int, list[int]] = {}
    whole = len(pixels) - len(pixels) % bands
    alphas = pixels[3:whole:4] if bands == 4 else itertools.repeat(255)  # RGB: endless "opaque"
    channels = (pixels[0:whole:bands], pixels[1:whole:bands], pixels[2:whole:bands])
    for r, g, b, a in zip(*channels, alphas, strict=False):
        if a < 128:
            continue
        key = ((r >> 5) << 6) | ((g >> 5) << 3) | (b >> 5)
        slot = counts.get(key)
        if slot is None:
            counts[key] = [1, r, g, b]
        else:
            slot[0] += 1
            slot[1] += r
            slot[2] += g
            slot[3] += b
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    floor = MIN_SHARE * sum(slot[0] for slot in counts.values())
    chosen: list[tuple[int, int, int]] = []
    for _key, (n, r, g, b) in ranked:
        if n < floor:
            break
        colour = (round(r / n), round(g / n), round(b / n))
        if all(_distance(colour, other) >= MIN_DISTANCE for other in chosen):
            chosen.append(colour)
            if len(chosen) == size:
                break
    return ["#{:02x}{:02x}{:02x}".format(*c) for c in chosen]


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """'Redmean' colour distance: cheap and closer to perception than plain RGB distance."""
    rmean = (a[0] + b[0]) / 2
    dr, dg, db = a[0] - b[0], a[1] - b[1], a[2] - b[2]
    return float(((2 + rmean / 256) * dr * dr + 4 * dg * dg + (2 + (255 - rmean) / 256) * db * db) ** 0.5)
