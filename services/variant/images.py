"""Image work with libvips, pure and synchronous: bytes in, encoded variants and facts out.

Runs in the runtime's CPU pool (libvips releases the GIL, so both cores work), never on the event
loop. The pipeline, and why:

1. `probe`: the header only (libvips loads lazily). Format allow-list, pixel and frame limits are
   checked here, so a decompression bomb is rejected before a single pixel is allocated. A camera
   RAW that starts like a TIFF is refused here too (raw.py): only its thumbnail would be read.
2. One decode, streamed, at the largest preset's size: JPEG with DCT scaling (shrink-on-load),
   one resize (alpha premultiplied), then the EXIF orientation and ICC profile → sRGB (CMYK
   included) applied to the small image. Only frame 1 of an animation is decoded unless a preset
   asks for animation. The result is materialised (a few MB), because a sequential libvips
   pipeline read twice would decode the source twice.
3. Each smaller preset is resized from the previous, already small image, not from the source.
4. Encode with metadata stripped (`keep="none"`: EXIF, XMP, ICC; pixels are sRGB by then).
5. Colours and a ThumbHash from ≤ 64 and ≤ 32 px copies of the smallest variant (~4 ms in all).

Memory per image: the source bytes + the largest variant's pixels + libvips' line buffers, bounded
by `max_image_bytes` and the preset sizes, not by the source's pixel count.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import pyvips

from shared.malloc import reuse_big_buffers
from shared.runtime import Reject
from shared.sniff import sniff

from . import colours, thumbhash
from .presets import Preset
from .raw import camera_raw

FAIL_ON = "error"  # truncated or corrupt data fails the load instead of coming out grey
JPEG_EOI = b"\xff\xd9"
LOADERS: dict[str, str] = {  # libvips loader -> format we report; anything else is refused
    "jpegload_source": "jpeg",
    "uhdrload_source": "jpeg",  # Ultra HDR (Android 14+ cameras): a JPEG plus a gain map; the SDR JPEG is what we read
    "pngload_source": "png",
    "webpload_source": "webp",
    "gifload_source": "gif",
    "tiffload_source": "tiff",
    "heifload_source": "heif",
}
WIDE_INTEGERS = {"ushort": 65535, "short": 32767, "uint": 4294967295, "int": 2147483647}  # format -> full scale
FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WebP", "gif": "GIF", "tiff": "TIFF", "heif": "HEIF",
                "avif": "AVIF"}
ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
NO_DECODER = "has not been built in"  # libheif, when a codec's plugin is missing
NO_HEVC = ("this server's libvips has no HEVC decoder (the pyvips-binary wheel ships without libde265) and "
           "the optional one is not installed: pip install 'jetmedia[heic]' (pi-heif: libheif with libde265), "
           "or export it as JPEG or AVIF; AVIF and other HEIF work")
KERNEL = "cubic"  # resize kernel: chosen on bytes and PSNR in bench/variant.py (see docs/benchmarks.md)


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 100_000_000
    max_frames: int = 500


@dataclass(frozen=True)
class Header:
    format: str  # jpeg, png, webp, gif, tiff, heif, avif
    width: int  # as displayed: EXIF orientation applied
    height: int
    frames: int
    has_icc: bool
    has_alpha: bool
    orientation: int = 1  # EXIF 1-8
    cmyk: bool = False


@dataclass(frozen=True)
class Encoded:
    preset: Preset
    data: bytes
    width: int
    height: int
    frames: int = 1


@dataclass(frozen=True)
class Rendered:
    source: Header
    variants: list[Encoded]
    colours: list[str]  # dominant first
    placeholder: str  # ThumbHash, base64


@functools.cache
def configure(threads: int) -> None:
    """Process-wide libvips settings, once: its own threads per image (the CPU pool already runs
    one image per core, and the brief measured 1 thread per image as faster on 2 cores); no
    operation cache (every image is new, a cache only holds memory); untrusted loaders off."""
    if threads > 0:
        pyvips.concurrency_set(threads)
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.block_untrusted_set(True)
    _quiet_info()
    reuse_big_buffers()  # a 1600 px image in memory is 5-7 MB (shared/malloc.py)


def _quiet_info() -> None:
    """libvips logs ~44 INFO lines per photo (every resize's mask, every evaluation's end), and
    pyvips hands each to Python logging through a callback that has to take the GIL, from the
    CPU threads while the event loop may hold it. Warnings and errors still go to Python logging;
    INFO and DEBUG go to GLib's default handler, which drops them (unless G_MESSAGES_DEBUG)."""
    handler = getattr(pyvips, "_log_handler_id", None)
    callback = getattr(pyvips, "_log_handler_cb", None)
    if not handler or callback is None:
        return
    levels = pyvips.GLogLevelFlags
    pyvips.glib_lib.g_log_remove_handler(b"VIPS", handler)
    pyvips._log_handler_id = pyvips.glib_lib.g_log_set_handler(  # removed at exit by pyvips
        b"VIPS", levels.LEVEL_MESSAGE | levels.LEVEL_WARNING | levels.LEVEL_CRITICAL | levels.LEVEL_ERROR
        | levels.FLAG_FATAL | levels.FLAG_RECURSION, callback, pyvips.ffi.NULL,
    )


def probe(source: bytes, limits: Limits) -> Header:
    """Read the header only; refuse what is not an image we serve or is over a limit."""
    if not source:
        raise Reject("source image is empty (0 bytes)")
    try:
        image = pyvips.Image.new_from_source(_memory(source), "", access="sequential", fail_on=FAIL_ON)
        loader = str(image.get("vips-loader"))
    except pyvips.Error as exc:
        kind = sniff(source[:64])  # it starts like one we serve: then it is that one, damaged
        if kind is not None and kind.media == "image":
            name = FORMAT_NAMES.get(kind.format, kind.format.upper())
            raise Reject(f"not a readable {name} image (truncated or corrupt): {_first_line(exc)}") from None
        raise Reject(f"not a supported image (unknown format or corrupt header): {_first_line(exc)}") from None
    fmt = LOADERS.get(loader)
    if fmt is None:
        raise Reject(f"unsupported image format ({loader.removesuffix('_source')})")
    if fmt == "tiff" and (raw := camera_raw(source)):
        raise Reject(f"{raw} photo: only its embedded thumbnail could be read here, not the sensor data; "
                     "upload a JPEG, HEIF or TIFF exported from the camera or an editor")
    fields = set(image.get_fields())
    if fmt == "heif" and "heif-compression" in fields and str(image.get("heif-compression")) == "av1":
        fmt = "avif"
    # HEIF's pages are its top-level images (a burst, a depth map's sibling), not an animation: the primary one
    frames = int(image.get("n-pages")) if "n-pages" in fields and fmt != "heif" else 1
    width, height = image.width, image.height  # one page: n=1 is the default
    pixels = width * height
    if pixels > limits.max_pixels:
        raise Reject(
            f"image is {width}×{height} = {pixels / 1e6:.1f} MP, over the limit of {limits.max_pixels / 1e6:.1f} MP "
            "(rejected from the header, nothing decoded)"
        )
    if frames > limits.max_frames:
        raise Reject(f"image has {frames} frames/pages, over the limit of {limits.max_frames}")
    orientation = int(image.get("orientation")) if "orientation" in fields else 1
    if orientation in ROTATED:
        width, height = height, width
    return Header(fmt, width, height, frames, "icc-profile-data" in fields, bool(image.hasalpha()),
                  orientation if 1 <= orientation <= 8 else 1, image.interpretation == "cmyk")


def render(source: bytes, presets: tuple[Preset, ...], limits: Limits = Limits(), vips_threads: int = 1) -> Rendered:
    """Every preset of one image, plus its colours and placeholder. Raises Reject on bad input."""
    configure(vips_threads)
    header = probe(source, limits)
    animate = [p for p in presets if p.animated and header.frames > 1]
    stills = sorted((p for p in presets if p not in animate), key=lambda p: -p.size)
    try:
        encoded: dict[str, Encoded] = {}
        smallest: pyvips.Image | None = None
        if stills:
            image = _decode_complete(source, stills[0].size, header)
            for preset in stills:
                image = _resize(image, preset.size).copy_memory()  # the next, smaller one starts here
                encoded[preset.name] = Encoded(preset, _encode(image, preset), image.width, image.height)
            smallest = image
        for preset in animate:
            if header.width * header.height * header.frames > limits.max_pixels:
                raise Reject(
                    f"animation is {header.width}×{header.height} × {header.frames} frames, over the "
                    f"limit of {limits.max_pixels / 1e6:.1f} MP for animated output"
                )
            frames = _decode_animation(source, preset.size, header)
            page_height = _page_height(frames)
            encoded[preset.name] = Encoded(
                preset, _encode(frames, preset), frames.width, page_height, frames.height // page_height
            )
            if smallest is None:
                smallest = frames.crop(0, 0, frames.width, page_height)
        assert smallest is not None
        palette, placeholder = facts(smallest)
    except pyvips.Error as exc:
        if header.format == "heif" and NO_DECODER in str(exc):
            raise Reject(f"HEIC photo (HEVC-coded HEIF, as iPhones save them): {NO_HEVC}") from None
        raise Reject(f"cannot decode {header.format} image: {_first_line(exc)}") from None
    return Rendered(header, [encoded[p.name] for p in presets], palette, placeholder)


def _decode_complete(source: bytes, size: int, header: Header) -> pyvips.Image:
    """`_decode`, forgiving one defect browsers forgive: a JPEG whose pixels are all there but
    whose 2-byte end marker (EOI) is not (some cameras, apps and copy tools write them). libjpeg
    reports that like a truncated file; the marker is added and the file decoded again with
    warnings as errors: a JPEG cut short anywhere else now meets the marker inside its data
    ("premature end of data segment"), fails, and is refused with the first error."""
    try:
        return _decode(source, size, header)
    except pyvips.Error as exc:
        if header.format != "jpeg" or "premature end" not in str(exc) or source.endswith(JPEG_EOI):
            raise
        try:
            return _decode(source + JPEG_EOI, size, header, fail_on="warning")
        except pyvips.Error:
            raise exc from None


def _decode(source: bytes, size: int, header: Header, fail_on: str = FAIL_ON) -> pyvips.Image:
    """Decode once, to at least `size` on the long edge: upright, sRGB, 8-bit, in memory.

    JPEG is decoded with DCT scaling (shrink-on-load) by the largest power of two that keeps the
    long edge ≥ `size`, as Pillow's draft() does; libvips' own thumbnail() would decode
    6000 → 1600 at full size (it keeps a 2× margin), 2.5× slower for no visible gain. The one
    resize after it uses KERNEL. Orientation and colour are fixed on the small image."""
    options: dict[str, object] = {"access": "sequential", "fail_on": fail_on}
    if header.format == "jpeg":
        long_edge, short_edge = max(header.width, header.height), min(header.width, header.height)
        # libjpeg's scaled size is floored: a strip 5 px high shrunk by 8 would be 0 px ("bad dimensions")
        shrink = next(s for s in (8, 4, 2, 1) if s == 1 or (long_edge / s >= size and short_edge >= s))
        image = pyvips.Image.jpegload_source(_memory(source), shrink=shrink, **options)
    else:
        image = pyvips.Image.new_from_source(_memory(source), "", **options)
    try:
        image = _resize(image, size).copy_memory()  # the decode happens here, streamed
    except pyvips.Error as exc:
        if header.format != "heif" or NO_DECODER not in str(exc):
            raise
        image = _resize(_decode_hevc(source), size).copy_memory()
    if header.orientation != 1:
        image = image.autorot()
    return _to_srgb(image, header).copy_memory()


def _decode_hevc(source: bytes) -> pyvips.Image:
    """An HEIC photo (HEVC-coded HEIF: the iPhone's default) through libheif's own decoder from
    the optional pi-heif wheel, which carries libde265; the pyvips-binary wheel leaves HEVC out
    (patents). libheif applies the container's rotation and mirroring (irot/imir), so the pixels
    come upright; the ICC profile is attached for `_to_srgb`. Only the primary image is read."""
    try:
        import pi_heif
    except ImportError:
        raise Reject(f"HEIC photo (HEVC-coded HEIF, as iPhones save them): {NO_HEVC}") from None
    try:
        heif = pi_heif.open_heif(io.BytesIO(source), convert_hdr_to_8bit=True)
        width, height = heif.size
        bands = len(heif.mode)  # RGB or RGBA, 8 bits each
        rows = memoryview(heif.data)
        row = width * bands
        pixels = rows.tobytes() if heif.stride == row else b"".join(
            rows[y * heif.stride:y * heif.stride + row] for y in range(height))
    except (RuntimeError, ValueError) as exc:  # libheif's errors (a damaged or unsupported file)
        raise Reject(f"cannot decode heif image: {_first_line(exc)}") from None
    image = pyvips.Image.new_from_memory(pixels, width, height, bands, "uchar").copy(interpretation="srgb")
    if icc := heif.info.get("icc_profile"):
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    return image


def _memory(source: bytes) -> pyvips.Source:
    """The bytes we hold, as a libvips source that reads them in place. A `*_buffer` load copies
    the whole file into a new blob first (pyvips memmoves it while holding the GIL): 2.4 MB twice
    per photo (probe, decode), ~2 ms of a CPU thread the event loop then waits for."""
    return pyvips.Source.new_from_memory(source)


def _resize(image: pyvips.Image, size: int) -> pyvips.Image:
    """Long edge to `size` exactly (never up), alpha premultiplied while filtering."""
    long_edge = max(image.width, image.height)
    if long_edge <= size:
        return image
    scale = size / long_edge
    width = size if image.width >= image.height else max(1, round(image.width * scale))
    height = size if image.height > image.width else max(1, round(image.height * scale))
    alpha, original = image.hasalpha(), image.format
    if alpha:
        image = image.premultiply()
    image = image.resize(width / image.width, vscale=height / image.height, kernel=KERNEL)
    if alpha:
        image = image.unpremultiply().cast(original)
    return image


def _to_srgb(image: pyvips.Image, header: Header) -> pyvips.Image:
    """Pixels in sRGB, 8 bits: an embedded ICC profile is applied (CMYK without one gets a generic
    CMYK profile), so stripping the profile on save loses nothing."""
    if header.has_icc or header.cmyk:
        image = image.icc_transform("srgb", embedded=True, input_profile="cmyk" if header.cmyk else "srgb",
                                    intent="perceptual")
    if image.format in WIDE_INTEGERS and image.interpretation in ("srgb", "b-w", "multiband"):
        # integer samples wider than 8 bits in an 8-bit colour space (a 32-bit TIFF): the cast below
        # would clip them (a red came out cyan); their range is scaled to 0-255 instead
        image = (image * (255 / WIDE_INTEGERS[image.format])).cast("uchar")
    if image.format != "uchar" or image.interpretation not in ("srgb", "b-w"):
        image = image.colourspace("srgb")  # 16-bit PNG/TIFF, odd TIFF colour spaces
        if image.format != "uchar":
            image = image.cast("uchar")
    return image


def _decode_animation(source: bytes, size: int, header: Header) -> pyvips.Image:
    """Every frame at `size` (libvips' thumbnail keeps the page layout of animations intact)."""
    extra = {"export_profile": "srgb"} if header.has_icc else {}
    image = pyvips.Image.thumbnail_buffer(
        source, size, height=size, size="down", option_string=f"n=-1,fail_on={FAIL_ON}", **extra
    )
    if image.format != "uchar" or image.interpretation not in ("srgb", "b-w"):
        image = image.colourspace("srgb").cast("uchar")
    return image.copy_memory()


def _page_height(image: pyvips.Image) -> int:
    if "page-height" in image.get_fields():
        return int(image.get("page-height"))
    return image.height


def _encode(image: pyvips.Image, preset: Preset) -> bytes:
    match preset.format:
        case "webp":
            return bytes(image.webpsave_buffer(Q=preset.q, effort=preset.e, keep="none"))
        case "avif":
            return bytes(image.heifsave_buffer(Q=preset.q, effort=preset.e, compression="av1", keep="none"))
        case "jpeg":
            if image.hasalpha():
                image = image.flatten(background=[255])
            return bytes(image.jpegsave_buffer(Q=preset.q, keep="none", optimize_coding=True, interlace=True))
        case "png":
            return bytes(image.pngsave_buffer(compression=preset.e, keep="none"))
    raise ValueError(f"unknown format {preset.format}")


def facts(image: pyvips.Image) -> tuple[list[str], str]:
    """Palette from ≤ 64 px, ThumbHash from ≤ 32 px, both 8-bit sRGB. Two small libvips
    evaluations (each has a fixed cost of a few hundred µs, more than the pixels): the 64 px copy
    is resized by `_resize` (alpha premultiplied, as thumbnail_image did), the 32 px one from it."""
    small = _resize(image, 64)
    if small.interpretation != "srgb":
        small = small.colourspace("srgb")
    small = small.cast("uchar").copy_memory()
    palette = colours.palette(bytes(small.write_to_memory()), small.bands)
    tiny = _resize(small, 32)
    if not tiny.hasalpha():
        tiny = tiny.bandjoin(255)  # ThumbHash takes RGBA
    tiny = tiny.cast("uchar").copy_memory()
    hash_ = thumbhash.encode(tiny.width, tiny.height, bytes(tiny.write_to_memory()))
    return palette, thumbhash.to_text(hash_)


def _first_line(exc: pyvips.Error) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines if not line.startswith("unable to ")]
    return (detail or lines or ["libvips error"])[0][:300]
