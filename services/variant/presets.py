"""Variant presets: what sizes and formats an image becomes, configurable without code.

`JETMEDIA_VARIANT_PRESETS` holds one of
- JSON: a list of objects (`[{"name": "thumb", "size": 400, "format": "webp", "quality": 80}]`)
  or an object keyed by name;
- a compact list for env files: `thumb:webp:400:q80:e2,display:webp:1600,hero:avif:2400:q55:optional`
  (`qN` quality, `eN` effort, `optional` = made only when a message asks for it by name,
  `animated` = keep every frame of an animated source);
- a path to a JSON file holding the same.
Empty means the built-in catalogue below. A message's `presets` picks presets by name; without it the
stage makes every preset that is not `optional`.

Why the WebP defaults (quality 79, effort 0): the time is codec-bound and libwebp's effort is the
big lever. bench/variant.py (docs/benchmarks.md) holds the stage against Node sharp at its defaults
(q80, effort 4) on bytes and PSNR of the display WebP vs a full-size lanczos3 reference: effort 0
encodes the 1600 px WebP in ~25 ms where effort 2 takes ~39 and 4 ~115; at q79 its bytes stay
under sharp's and its PSNR equals what effort 2 at q80 gave (at q80 effort 0 made ~20 % more bytes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import msgspec

Format = Literal["webp", "avif", "jpeg", "png"]
EXTENSIONS: dict[str, str] = {"webp": "webp", "avif": "avif", "jpeg": "jpg", "png": "png"}
CONTENT_TYPES: dict[str, str] = {"webp": "image/webp", "avif": "image/avif", "jpeg": "image/jpeg", "png": "image/png"}

# Per format when a preset does not say: quality on the codec's own scale, effort where it has one.
DEFAULT_QUALITY: dict[str, int] = {"webp": 79, "avif": 55, "jpeg": 82, "png": 100}
DEFAULT_EFFORT: dict[str, int] = {"webp": 0, "avif": 2, "jpeg": 0, "png": 3}


class Preset(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    size: int  # the long edge in px; a smaller source is never upscaled
    format: Format = "webp"
    quality: int | None = None  # None: DEFAULT_QUALITY[format]
    effort: int | None = None  # webp 0-6, avif 0-9, png compression 0-9; None: DEFAULT_EFFORT[format]
    optional: bool = False  # made only when a message names it
    animated: bool = False  # keep all frames of an animated GIF/WebP (webp output)

    @property
    def q(self) -> int:
        return DEFAULT_QUALITY[self.format] if self.quality is None else self.quality

    @property
    def e(self) -> int:
        return DEFAULT_EFFORT[self.format] if self.effort is None else self.effort

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


BUILTIN: tuple[Preset, ...] = (
    Preset(name="thumb", size=400, effort=2),  # at 400 px effort 2 costs ~1 ms more than 0 for ~8 % fewer bytes
    Preset(name="display", size=1600),
    Preset(name="display-avif", size=1600, format="avif", optional=True),
    Preset(name="display-jpeg", size=1600, format="jpeg", optional=True),
    Preset(name="animated", size=800, animated=True, optional=True),
)


class PresetError(ValueError):
    """The configured presets make no sense: a start-up error, not a message error."""


def parse(spec: str) -> tuple[Preset, ...]:
    """Presets from the setting's text (JSON, compact list or file path); empty: BUILTIN."""
    text = spec.strip()
    if not text:
        return BUILTIN
    if text[0] not in "[{" and ":" not in text.split(",")[0]:
        path = Path(text).expanduser()
        if not path.is_file():
            raise PresetError(f"variant presets file {path} does not exist")
        text = path.read_text().strip()
    presets = _from_json(text) if text[0] in "[{" else tuple(_compact(part) for part in text.split(",") if part.strip())
    return _checked(presets)


def _from_json(text: str) -> tuple[Preset, ...]:
    try:
        raw = json.loads(text)
        if isinstance(raw, dict):
            raw = [{"name": name, **spec} for name, spec in raw.items()]
        return tuple(msgspec.convert(raw, list[Preset]))
    except (ValueError, msgspec.ValidationError, TypeError) as exc:
        raise PresetError(f"invalid variant presets JSON: {exc}") from None


def _compact(part: str) -> Preset:
    fields = [f.strip() for f in part.strip().split(":")]
    if len(fields) < 3:
        raise PresetError(f"variant preset {part!r}: expected name:format:size[:qN][:eN][:optional][:animated]")
    name, fmt, size, *flags = fields
    spec: dict[str, object] = {"name": name, "format": fmt, "size": size}
    for flag in flags:
        if flag in ("optional", "animated"):
            spec[flag] = True
        elif flag[:1] in ("q", "e") and flag[1:].isdigit():
            spec["quality" if flag[0] == "q" else "effort"] = int(flag[1:])
        else:
            raise PresetError(f"variant preset {part!r}: unknown option {flag!r}")
    try:
        return msgspec.convert(spec, Preset, strict=False)
    except msgspec.ValidationError as exc:
        raise PresetError(f"variant preset {part!r}: {exc}") from None


_LIMITS: dict[str, tuple[int, int]] = {"webp": (0, 6), "avif": (0, 9), "jpeg": (0, 0), "png": (0, 9)}


def _checked(presets: tuple[Preset, ...]) -> tuple[Preset, ...]:
    names = [p.name for p in presets]
    if not presets:
        raise PresetError("no variant presets configured")
    if len(set(names)) != len(names):
        raise PresetError(f"duplicate variant preset names in {names}")
    for p in presets:
        if not p.name or not all(c.isalnum() or c in "-_" for c in p.name):
            raise PresetError(f"variant preset name {p.name!r}: use letters, digits, - and _ only")
        if not 16 <= p.size <= 16384:
            raise PresetError(f"variant preset {p.name}: size {p.size} is outside 16-16384 px")
        if not 1 <= p.q <= 100:
            raise PresetError(f"variant preset {p.name}: quality {p.q} is outside 1-100")
        low, high = _LIMITS[p.format]
        if p.format != "jpeg" and not low <= p.e <= high:
            raise PresetError(f"variant preset {p.name}: effort {p.e} is outside {low}-{high} for {p.format}")
        if p.animated and p.format != "webp":
            raise PresetError(f"variant preset {p.name}: animated output needs format webp")
    if all(p.optional for p in presets):
        raise PresetError("every variant preset is optional: a message without `presets` would make nothing")
    return presets


def select(configured: tuple[Preset, ...], names: list[str] | None) -> tuple[Preset, ...]:
    """The presets a message asks for (by name), or the non-optional ones. Unknown names raise
    KeyError with the known ones listed."""
    if not names:
        return tuple(p for p in configured if not p.optional)
    by_name = {p.name: p for p in configured}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"unknown variant preset(s) {', '.join(unknown)}; configured: {', '.join(by_name)}")
    return tuple(by_name[n] for n in dict.fromkeys(names))
