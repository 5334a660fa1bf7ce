"""Image work with libvips, pure and synchronous: bytes in, encoded variants out.

Runs in the runtime's CPU pool (pyvips releases the GIL), never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from shared.runtime import Reject


@dataclass(frozen=True)
class Preset:
    name: str
    size: int  # long edge in px; never upscaled
    format: str = "webp"
    quality: int = 80
    effort: int = 4


@dataclass(frozen=True)
class Encoded:
    preset: Preset
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Rendered:
    source_format: str
    source_width: int
    source_height: int
    variants: list[Encoded]


DEFAULT_PRESETS = (Preset("thumb", 400),)


def render(source: bytes, presets: tuple[Preset, ...] = DEFAULT_PRESETS) -> Rendered:
    try:
        header = pyvips.Image.new_from_buffer(source, "")
        loader = str(header.get("vips-loader"))
        width, height = header.width, header.height
        variants = []
        for preset in presets:
            image = pyvips.Image.thumbnail_buffer(source, preset.size, height=preset.size, size="down")
            data = image.webpsave_buffer(Q=preset.quality, effort=preset.effort, keep="none")
            variants.append(Encoded(preset, data, image.width, image.height))
    except pyvips.Error as exc:
        raise Reject(f"cannot decode image: {str(exc).strip().splitlines()[0]}") from None
    return Rendered(loader.removesuffix("load_buffer").removesuffix("load"), width, height, variants)
