"""Images as phones, scanners and the web make them, at the edges the main format tests do not
reach: each case here was a wrong or vague outcome once."""

from __future__ import annotations

import pytest
import pyvips

from services import samples
from services.variant import presets
from services.variant.images import render
from shared.runtime import Reject

DEFAULTS = presets.select(presets.BUILTIN, None)  # thumb 400 + display 1600, WebP


@pytest.mark.parametrize(("width", "height"), [(20000, 3), (3, 20000), (12000, 7)])
def test_a_jpeg_strip_thinner_than_the_dct_shrink_renders(width: int, height: int) -> None:
    """Shrink-on-load floors the short side: 12000×7 shrunk by 8 was 0 px high ("bad dimensions")."""
    strip = pyvips.Image.black(width, height).new_from_image([10, 200, 30]).cast("uchar").copy(interpretation="srgb")
    rendered = render(bytes(strip.jpegsave_buffer(Q=90)), DEFAULTS)
    long_edges = {v.preset.name: max(v.width, v.height) for v in rendered.variants}
    assert long_edges == {"thumb": 400, "display": 1600}
    assert all(min(v.width, v.height) >= 1 for v in rendered.variants)
    assert rendered.colours == ["#0ac81e"]


def test_an_iphone_heic_is_refused_with_the_reason_not_a_decoder_detail() -> None:
    """The wheel's libvips has no HEVC decoder: the reason was "source: bad seek to 1024"."""
    source = samples.hevc_heif(64, 48)
    assert pyvips.Image.new_from_buffer(source, "").get("heif-compression") == "hevc"
    with pytest.raises(Reject, match=r"HEIC photo \(HEVC-coded HEIF.*no HEVC decoder.*AVIF and other HEIF work"):
        render(source, DEFAULTS)
