"""Images as phones, scanners and the web make them, at the edges the main format tests do not
reach: each case here was a wrong or vague outcome once."""

from __future__ import annotations

import io
import sys

import pillow_heif
import pytest
import pyvips
from PIL import Image

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


def test_an_iphone_heic_renders_upright_in_srgb() -> None:
    """HEVC-coded HEIF, the iPhone's default. The wheel's libvips has no HEVC decoder (it said
    "source: bad seek to 1024", then a refusal); libheif's own, from pi-heif, decodes it. Made by
    libheif with x265 (pillow-heif), in Display P3 like the phone's, rotated by the container."""
    p3 = pyvips.Image.new_from_array([[0]]).cast("uchar").colourspace("srgb").icc_export(output_profile="p3")
    picture = Image.new("RGB", (640, 320), P3_ORANGE)
    picture.paste((0, 0, 255), (320, 0, 640, 320))  # left orange, right blue
    source = _heic(picture, icc=p3.get("icc-profile-data"))
    header = pyvips.Image.new_from_buffer(source, "")
    assert header.get("heif-compression") == "hevc" and (header.width, header.height) == (640, 320)
    rendered = render(source, DEFAULTS)
    assert [(v.width, v.height) for v in rendered.variants] == [(400, 200), (640, 320)]
    display = pyvips.Image.new_from_buffer(rendered.variants[1].data, "")
    expected = pyvips.Image.black(1, 1).new_from_image(list(P3_ORANGE)).cast("uchar").copy(interpretation="srgb")
    expected = expected.icc_transform("srgb", input_profile="p3", intent="perceptual").getpoint(0, 0)
    assert all(abs(a - b) <= 6 for a, b in zip(display.getpoint(40, 160), expected, strict=True)), expected
    assert display.getpoint(600, 160)[2] > 200  # blue stays on the right

    # stored on its side (portrait, blue on top), shown upright: the container turns it 90° clockwise
    turned = render(_heic(picture.rotate(90, expand=True), orientation=6), DEFAULTS)
    assert [(v.width, v.height) for v in turned.variants] == [(400, 200), (640, 320)]
    upright = pyvips.Image.new_from_buffer(turned.variants[1].data, "")
    assert upright.getpoint(40, 160)[0] > 200 and upright.getpoint(600, 160)[2] > 200  # orange left, blue right


def test_a_damaged_heic_and_a_missing_decoder_are_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    placeholder = samples.hevc_heif(64, 48)  # the container of an iPhone photo, no picture data in it
    with pytest.raises(Reject, match=r"cannot decode heif image: "):
        render(placeholder, DEFAULTS)
    monkeypatch.setitem(sys.modules, "pi_heif", None)  # a server without the optional decoder
    with pytest.raises(Reject, match=r"HEIC photo \(HEVC-coded HEIF.*pip install 'jetmedia\[heic\]'"):
        render(_heic(Image.new("RGB", (64, 48), P3_ORANGE)), DEFAULTS)


P3_ORANGE = (230, 120, 40)


def _heic(picture: Image.Image, icc: bytes | None = None, orientation: int = 1) -> bytes:
    """An HEIC as a phone writes one (libheif + x265); `orientation` (EXIF's numbering) is
    written as the container's rotation (irot), which viewers apply."""
    heif = pillow_heif.from_pillow(picture)
    if icc:
        heif.info["icc_profile"] = icc
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    heif.save(out, quality=92, exif=exif.tobytes())
    return out.getvalue()


def test_a_jpeg_missing_only_its_end_marker_renders_but_a_cut_one_is_still_refused() -> None:
    """Some cameras and copy tools drop the final 2-byte EOI; every pixel is there and browsers
    show it. It was refused as "premature end of JPEG image", like a truncated upload."""
    whole = samples.photo(1200, 800)
    progressive = bytes(pyvips.Image.new_from_buffer(whole, "").jpegsave_buffer(Q=88, interlace=True))
    for source in (whole, progressive):
        assert source.endswith(b"\xff\xd9")
        rendered = render(source[:-2], DEFAULTS)
        assert [(v.width, v.height) for v in rendered.variants] == [(400, 267), (1200, 800)]
        for cut in (source[:-3], source[: len(source) * 3 // 4]):  # a byte of the picture gone: refused
            with pytest.raises(Reject, match="premature end of JPEG image"):
                render(cut, DEFAULTS)


def test_an_android_ultra_hdr_jpeg_is_a_jpeg_upright_and_colour_managed() -> None:
    """libvips opens a JPEG with a gain map with its `uhdrload`, which was not on the allow-list:
    "unsupported image format (uhdrload)" for every photo of a recent Pixel or Galaxy."""
    source = samples.ultra_hdr_jpeg(600, 400, orientation=6)
    assert pyvips.Image.new_from_buffer(source, "").get("vips-loader") == "uhdrload_buffer"
    rendered = render(source, DEFAULTS)
    assert (rendered.source.format, rendered.source.width, rendered.source.height) == ("jpeg", 600, 400)
    out = pyvips.Image.new_from_buffer(next(v for v in rendered.variants if v.preset.name == "display").data, "")
    assert (out.width, out.height) == (600, 400)
    red = [out.crop(10, 150, 40, 100).extract_band(i).avg() for i in range(3)]  # upright: red band on the left
    assert red[0] > 140 and red[1] < 50 and red[2] < 50, red


def test_a_32_bit_integer_tiff_keeps_its_colours() -> None:
    """Samples wider than 16 bits tagged sRGB were cast to 8 bits, i.e. clipped: red came out cyan."""
    wide = (samples.swatches(400, 300).cast("uint") * 16843009).cast("uint")  # 0-255 -> 0-2^32-1
    source = bytes(wide.tiffsave_buffer())
    assert pyvips.Image.new_from_buffer(source, "").format == "uint"
    out = pyvips.Image.new_from_buffer(render(source, DEFAULTS).variants[1].data, "")
    red = [out.crop(10, 100, 50, 100).extract_band(i).avg() for i in range(3)]
    assert abs(red[0] - 200) < 6 and abs(red[1] - 30) < 6 and abs(red[2] - 30) < 6, red


@pytest.mark.parametrize(("fmt", "name"), [("tiff", "TIFF"), ("webp", "WebP"), ("avif", "AVIF"), ("gif", "GIF")])
def test_a_truncated_upload_is_named_as_the_format_it_starts_as(fmt: str, name: str) -> None:
    """Half a TIFF was "not a supported image (unknown format ...): source is not in a known format"."""
    whole = samples.encoded(fmt, 320, 240)
    with pytest.raises(Reject, match=rf"not a readable {name} image \(truncated or corrupt\)|cannot decode"):
        render(whole[: len(whole) // 2], DEFAULTS)


@pytest.mark.parametrize(("source", "named"), [
    (samples.raw_like_tiff(make="NIKON CORPORATION"), r"a camera RAW \(NIKON CORPORATION\) photo"),
    (samples.raw_like_tiff(make="Apple", dng=True), "a DNG camera RAW photo"),
])
def test_a_camera_raw_is_refused_not_rendered_from_its_thumbnail(source: bytes, named: str) -> None:
    """A NEF/ARW/DNG starts like a TIFF; libvips read its first directory, the 160×120 thumbnail,
    and the job was "ready" with a postage stamp as its display image."""
    assert pyvips.Image.new_from_buffer(source, "").width == 160  # what used to become the "display"
    with pytest.raises(Reject, match=named + ": only its embedded thumbnail could be read"):
        render(source, DEFAULTS)


def test_tiffs_that_are_images_are_not_taken_for_raw() -> None:
    swatches = samples.swatches(64, 48)
    for options in ({}, {"pyramid": True, "tile": True, "tile_width": 16, "tile_height": 16}, {"compression": "jpeg"}):
        rendered = render(bytes(swatches.tiffsave_buffer(**options)), DEFAULTS)
        assert rendered.source.format == "tiff" and rendered.variants[0].width == 64
