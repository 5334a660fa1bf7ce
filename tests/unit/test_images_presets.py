"""Variant presets from configuration, and the ThumbHash encoder against known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.variant import presets, thumbhash
from services.variant.presets import Preset, PresetError
from shared.config import Settings


def test_default_is_thumb_400_and_display_1600_webp() -> None:
    chosen = presets.select(presets.parse(Settings().variant_presets), None)
    assert [(p.name, p.size, p.format) for p in chosen] == [("thumb", 400, "webp"), ("display", 1600, "webp")]
    # chosen against sharp on bytes and PSNR (bench/variant.py, docs/benchmarks.md)
    assert [(p.q, p.e) for p in chosen] == [(79, 2), (79, 0)]


def test_compact_form_from_the_environment() -> None:
    settings = Settings.from_env({"JETMEDIA_VARIANT_PRESETS": "sq:webp:256:q70:e0, hero:avif:2400:q50:e4:optional"})
    small, hero = presets.parse(settings.variant_presets)
    assert small == Preset(name="sq", size=256, format="webp", quality=70, effort=0)
    assert (hero.format, hero.q, hero.e, hero.optional) == ("avif", 50, 4, True)
    assert presets.select((small, hero), None) == (small,)
    assert presets.select((small, hero), ["hero"]) == (hero,)


def test_json_inline_and_from_a_file(tmp_path: Path) -> None:
    spec = {"card": {"size": 800, "format": "jpeg", "quality": 75}, "tiny": {"size": 64}}
    inline = presets.parse(json.dumps(spec))
    path = tmp_path / "presets.json"
    path.write_text(json.dumps([{"name": "card", "size": 800, "format": "jpeg", "quality": 75},
                                {"name": "tiny", "size": 64}]))
    assert presets.parse(str(path)) == inline
    assert inline[0].extension == "jpg" and inline[0].content_type == "image/jpeg"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("thumb:webp:400,thumb:webp:800", "duplicate"),
        ("thumb:bmp:400", "thumb:bmp:400"),
        ("thumb:webp:4", "outside 16-16384"),
        ("thumb:webp:400:q0", "quality 0"),
        ("thumb:webp:400:e9", "effort 9 is outside 0-6"),
        ("a:avif:400:animated", "animated output needs format webp"),
        ("a:webp:400:optional", "every variant preset is optional"),
        ("a:webp:400:fast", "unknown option 'fast'"),
        ("../x:webp:400", "letters, digits"),
        ('[{"name": "x"}]', "invalid variant presets JSON"),
        ("/no/such/presets.json", "does not exist"),
    ],
)
def test_bad_configuration_is_explained(spec: str, message: str) -> None:
    with pytest.raises(PresetError, match=message):
        presets.parse(spec)


def test_unknown_preset_in_a_message_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown variant preset.*huge; configured: thumb, display"):
        presets.select(presets.BUILTIN, ["thumb", "huge"])


# --- ThumbHash -----------------------------------------------------------------------------


def test_thumbhash_of_an_opaque_landscape() -> None:
    width, height = 32, 16
    rgba = bytes(
        value
        for y in range(height)
        for x in range(width)
        for value in ((255, 40, 40, 255) if x < width // 2 else (40, 40, 255, 255))
    )
    hash_ = thumbhash.encode(width, height, rgba)
    assert 15 <= len(hash_) <= 30
    assert not thumbhash.has_alpha(hash_)
    assert thumbhash.aspect_ratio(hash_) == pytest.approx(2.0, rel=0.25)
    r, g, b, a = thumbhash.average_rgba(hash_)
    assert (round(r * 255), round(g * 255), round(b * 255), a) == pytest.approx((148, 40, 148, 1.0), abs=6)
    assert thumbhash.from_text(thumbhash.to_text(hash_)) == hash_


def test_thumbhash_matches_the_reference_encoder() -> None:
    """Bytes from evanw/thumbhash's JS `rgbaToThumbHash` (npm thumbhash 0.1.1, run once with node)
    for this input. Flat or perfectly linear inputs can differ in a nibble: their AC terms are
    float noise around zero, and the summation order differs (ours is separable)."""
    width, height = 14, 10
    rgba = bytes(
        v for y in range(height) for x in range(width)
        for v in (10 + x * 9, 200 - y * 11, 30 + x * y, 255 if x < 6 else 40 + y * 10)
    )
    assert list(thumbhash.encode(width, height, rgba)) == [
        85, 73, 133, 28, 136, 57, 96, 118, 169, 120, 119, 136, 152,
        248, 104, 96, 96, 248, 89, 102, 136, 119, 136, 135, 7,
    ]


def test_thumbhash_with_alpha_and_bad_input() -> None:
    rgba = bytes(v for i in range(16 * 16) for v in (10, 200, 10, 255 if i % 16 < 8 else 0))
    hash_ = thumbhash.encode(16, 16, rgba)
    assert thumbhash.has_alpha(hash_)
    assert thumbhash.average_rgba(hash_)[3] == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match="fit in 100x100"):
        thumbhash.encode(101, 10, bytes(101 * 10 * 4))
    with pytest.raises(ValueError, match="RGBA bytes"):
        thumbhash.encode(2, 2, bytes(3))

