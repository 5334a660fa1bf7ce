"""Sample media made on the spot (no downloads): used by the demo, the tests and the benches."""

from __future__ import annotations

import pyvips


def photo(width: int = 3000, height: int = 2000, *, orientation: int = 1, quality: int = 88, seed: int = 1) -> bytes:
    """A photo-like JPEG: smooth colour fields plus fine texture, so codecs have real work."""
    bands = [
        (pyvips.Image.perlin(width, height, cell_size=max(width // 6, 8), seed=seed + i) + 1) * 110
        + pyvips.Image.perlin(width, height, cell_size=8, seed=seed + 10 + i) * 18
        for i in range(3)
    ]
    image = bands[0].bandjoin(bands[1:]).cast("uchar").copy(interpretation="srgb")
    if orientation != 1:
        image = image.copy()
        image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return bytes(image.jpegsave_buffer(Q=quality, keep="exif" if orientation != 1 else "none"))


def png_with_alpha(width: int = 640, height: int = 480) -> bytes:
    rgb = (pyvips.Image.perlin(width, height, cell_size=64, seed=7) + 1) * 120
    alpha = pyvips.Image.xyz(width, height)[0] * (255 / width)
    image = rgb.bandjoin([rgb * 0.5, rgb * 0.8, alpha]).cast("uchar").copy(interpretation="srgb")
    return bytes(image.pngsave_buffer())
