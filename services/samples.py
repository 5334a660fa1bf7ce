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


# --- images in every format the variant stage takes (tests, bench) ------------------------


def swatches(width: int = 400, height: int = 300, colours: tuple[tuple[int, int, int], ...] = (
    (200, 30, 30), (30, 160, 60), (40, 60, 200), (230, 200, 40),
)) -> pyvips.Image:
    """Vertical bands of known colours, left to right: colour checks have a right answer."""
    step = width // len(colours)
    bands = [pyvips.Image.black(step if i < len(colours) - 1 else width - step * i, height).new_from_image(list(c))
             for i, c in enumerate(colours)]
    image = bands[0]
    for band in bands[1:]:
        image = image.join(band, "horizontal")
    return image.cast("uchar").copy(interpretation="srgb")


def cmyk_jpeg(width: int = 400, height: int = 300) -> bytes:
    """A print-shop JPEG: CMYK pixels with the CMYK ICC profile embedded."""
    cmyk = swatches(width, height).icc_transform("cmyk", embedded=False, input_profile="srgb")
    return bytes(cmyk.jpegsave_buffer(Q=92, keep="icc"))


def ultra_hdr_jpeg(width: int = 400, height: int = 300, *, orientation: int = 1) -> bytes:
    """What Android 14+ cameras save: an SDR JPEG plus a gain map (ISO 21496-1 / Ultra HDR), the
    swatches, stored as a phone held at `orientation` stores them."""
    image = swatches(width, height)
    if orientation == 6:
        image = image.rot270()  # stored sideways; displayed upright
    hdr = image.colourspace("scrgb").copy()
    hdr.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return bytes(hdr.uhdrsave_buffer(Q=90, keep="exif"))


def animated_gif(width: int = 160, height: int = 120, frames: int = 4) -> bytes:
    """Frames of different solid colours (red first), stacked as libvips' pages."""
    palette = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (240, 240, 240)]
    pages = [pyvips.Image.black(width, height).new_from_image(list(palette[i % len(palette)])) for i in range(frames)]
    strip = pyvips.Image.arrayjoin(pages, across=1).cast("uchar").copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [100] * frames)
    return bytes(strip.gifsave_buffer())


def encoded(fmt: str, width: int = 640, height: int = 480, *, alpha: bool = False, **options: object) -> bytes:
    """The photo-like sample (or the alpha PNG's pixels) saved as webp, tiff, avif, png, gif..."""
    image = pyvips.Image.new_from_buffer(png_with_alpha(width, height) if alpha else photo(width, height), "")
    saver = {"webp": "webpsave_buffer", "tiff": "tiffsave_buffer", "avif": "heifsave_buffer",
             "png": "pngsave_buffer", "gif": "gifsave_buffer", "jpeg": "jpegsave_buffer"}[fmt]
    if fmt == "avif":
        options = {"compression": "av1", "effort": 0, **options}
    return bytes(getattr(image, saver)(**options))


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few hundred bytes whose header claims `width` × `height` pixels (a decompression bomb):
    one deflated row of zeros as the whole image data. Only the header is valid; that is the point."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * (1 + 3 * width), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hevc_heif(width: int = 64, height: int = 48) -> bytes:
    """The container of an iPhone photo (HEIF, one HEVC-coded image item) around a placeholder
    bitstream: valid boxes (ftyp, meta: hdlr, pitm, iinf, iloc, iprp with hvcC + ispe), so a
    reader gets as far as the header; neither libvips nor ffmpeg here can encode HEVC into HEIF."""
    import struct

    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", 8 + len(body)) + kind + body

    def full(kind: bytes, body: bytes, version: int = 0) -> bytes:
        return box(kind, bytes([version, 0, 0, 0]) + body)

    # HEVCDecoderConfigurationRecord: version 1, Main profile, level 3.0, 4:2:0, 8-bit, no NAL arrays
    hvcc = bytes([1, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 90, 0xF0, 0x00, 0xFC, 0xFD, 0xF8, 0xF8, 0, 0, 0x0F, 0])
    payload = b"\x00\x00\x00\x02\x26\x01"  # one length-prefixed NAL (a placeholder, not a picture)
    ftyp = box(b"ftyp", b"heic" + b"\0\0\0\0" + b"mif1heic")
    hdlr = full(b"hdlr", b"\0\0\0\0pict" + b"\0" * 12 + b"\0")
    pitm = full(b"pitm", struct.pack(">H", 1))
    iinf = full(b"iinf", struct.pack(">H", 1) + full(b"infe", struct.pack(">HH", 1, 0) + b"hvc1" + b"\0", version=2))
    ipco = box(b"ipco", box(b"hvcC", hvcc) + full(b"ispe", struct.pack(">II", width, height)))
    ipma = full(b"ipma", struct.pack(">IHB", 1, 1, 2) + bytes([0x81, 0x02]))
    iprp = box(b"iprp", ipco + ipma)

    def meta(offset: int) -> bytes:  # iloc v0: offset 4, length 4, base offset 0; one item, one extent
        extent = struct.pack(">HHHII", 1, 1, 0, 1, offset) + struct.pack(">I", len(payload))
        iloc = full(b"iloc", bytes([0x44, 0x00]) + extent)
        return full(b"meta", hdlr + pitm + iloc + iinf + iprp)

    head = ftyp + meta(0)
    return ftyp + meta(len(head) + 8) + box(b"mdat", payload)


def raw_like_tiff(*, make: str = "NIKON CORPORATION", dng: bool = False) -> bytes:
    """The first directory of a camera RAW (NEF, ARW, DNG...): a 160×120 RGB thumbnail marked as a
    reduced-resolution image (NewSubfileType 1), the camera's Make; the sensor data a real file
    keeps in SubIFDs is left out (nothing here reads it)."""
    import struct

    width, height = 160, 120
    pixels = bytes([200, 30, 30]) * (width * height)
    make_bytes = make.encode() + b"\0"
    entries = [  # (tag, type, count, value or offset): filled in below, sorted by tag
        (254, 4, 1, 1), (256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 0), (259, 3, 1, 1),
        (262, 3, 1, 2), (271, 2, len(make_bytes), 0), (273, 4, 1, 0), (277, 3, 1, 3), (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    if dng:
        entries.append((50706, 1, 4, 0x00000401))  # DNGVersion 1.4.0.0, inline
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    make_at = bits_at + 6
    pixels_at = make_at + len(make_bytes)
    values = {258: bits_at, 271: make_at, 273: pixels_at}
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = values.get(tag, value)
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 8, 8, 8) + make_bytes + pixels
