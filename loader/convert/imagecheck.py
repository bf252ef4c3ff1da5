"""Stage 2 of ``pack``: decode each file once, and decide what to store.

What is stored, and why: :data:`STORAGE_POLICY`, the one full statement of
it (``loader pack --help`` prints it; the README and docs point there).

How files are checked: a JPEG stored byte-for-byte is decoded at 1/8 scale
(``draft``): libjpeg still parses every marker and entropy-decodes every
coefficient of every scan, which is where every error a JPEG can have is found
(bad or missing tables, bad Huffman codes, truncation); only the inverse DCT,
upsampling and colour conversion, steps that cannot fail, run on 64x fewer
pixels. That halves the cost of checking a photo (0.60 vs 1.10 ms for a
500x400 one here) and finds exactly the same bad files:
``tests/test_odd_images.py`` compares the two verdicts on hundreds of randomly
damaged JPEGs of every kind. Only Huffman-coded DCT JPEGs (baseline, extended,
progressive: :func:`jpeg_frame_marker`) are checked this way; rare kinds
(lossless, arithmetic-coded) are decoded fully. Truncated images are never
padded: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False while this module
decodes, and the caller's value is restored afterwards (:func:`strict_truncation`).

:attr:`CheckedImage.converted` says what happened, e.g. ``"exif-rotate"``,
``"cmyk->rgb"``, ``"p->rgb,gif->jpeg"``, ``"max-side"``, and is ``None`` for
byte-for-byte. :attr:`CheckedImage.height` and ``width`` are those of the
stored (upright, final) image: what a decoder produces for the stored bytes.

>>> img = check_image("photos/cat/001.jpg")             # doctest: +SKIP
>>> img.converted, img.height, img.width  # doctest: +SKIP
(None, 375, 500)
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["STORAGE_POLICY", "BadImage", "CheckedImage", "check_bytes", "check_image", "jpeg_frame_marker",
           "strict_truncation"]

STORAGE_POLICY = """\
Storage policy. Every file is decoded once with Pillow; files that are empty,
not images, corrupt or truncated are skipped and listed with a short reason in
DST/skipped.tsv (--strict: the first one is an error). Truncated images are
never padded.

A file is stored byte-for-byte (its original bytes) when all hold: it is a JPEG
or an 8-bit PNG; its mode is RGB or L (grayscale); it has no EXIF orientation
other than 1 and a readable EXIF block; it is not larger than --max-side.

Everything else is converted, then re-encoded as JPEG at --quality:
  - EXIF orientation is applied: every stored image is upright and carries no
    orientation tag, so every decoder agrees on its height and width; an
    unreadable EXIF block is stripped (decoders may disagree on it);
  - modes become RGB as torchvision's ImageFolder loader does (.convert("RGB"),
    alpha dropped): CMYK, P, LA, RGBA, 1, ...; L stays L; 16-bit images (PNG,
    TIFF) are scaled to 8 bits (>> 8) rather than clipped to white;
  - GIF (first frame), BMP, TIFF, WebP and other formats become JPEG (WebP
    needs a Pillow built with WebP, else the file is skipped saying so);
  - --max-side PX downscales so that max(height, width) <= PX (aspect kept,
    Lanczos).
DST/manifest.json records, per image, what was done (e.g. exif-rotate,
cmyk->rgb, p->rgb,gif->jpeg, max-side) and the stored height and width.
"""


@contextlib.contextmanager
def strict_truncation() -> Iterator[None]:
    """Make Pillow raise on truncated files for the duration of the block.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is Pillow's process-wide switch; a host
    application may have set it True for its own decodes, so it is set False
    only around ours (a truncated file must be reported, never padded with
    grey) and the caller's value comes back afterwards, exceptions included.
    Pillow has no per-image switch: a host thread decoding during the block
    sees False too (``pack`` decodes in its own worker processes).

    >>> with strict_truncation():
    ...     ImageFile.LOAD_TRUNCATED_IMAGES
    False
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that transpose height and width
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_KEEP_MODES = ("RGB", "L")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class BadImage(Exception):
    """The file cannot be stored; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CheckedImage:
    """What to store for one image: encoded ``data`` and its final size."""

    data: bytes
    height: int
    width: int
    converted: str | None


def _short(e: BaseException) -> str:
    msg = (str(e).strip().splitlines() or [""])[0]
    msg = msg or type(e).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."


# Start-of-frame markers of Huffman-coded DCT JPEGs (baseline, extended, progressive):
# the kinds whose reduced-scale decode is well trodden (every thumbnailer uses it).
_HUFFMAN_DCT_FRAMES = (0xC0, 0xC1, 0xC2)


def jpeg_frame_marker(data: bytes) -> int | None:
    """The second byte of a JPEG's start-of-frame marker (0xC0 baseline, 0xC2
    progressive, 0xC3 lossless, ...), or None if the header cannot be walked.

    >>> jpeg_frame_marker(bytes.fromhex("ffd8 ffe0 0004 0000 ffc2 0003 00".replace(" ", "")))
    194
    """
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):   # not DHT, JPG, DAC
            return marker
        if marker == 0xFF:                          # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _png_bit_depth(data: bytes) -> int | None:
    """Bit depth from the PNG IHDR chunk (Pillow reads 16-bit RGB as 8-bit RGB)."""
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) > 24:
        return data[24]
    return None


_MAGIC = [(b"\xff\xd8\xff", "JPEG"), (_PNG_SIGNATURE, "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")]


def _unidentified_reason(data: bytes) -> str:
    """Why Pillow could not identify ``data``: a known format's magic number
    means a damaged (or unsupported) image rather than a non-image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        from PIL import features

        if not features.check("webp"):
            return "WebP is not supported by this Pillow build (install Pillow with WebP)"
        return "corrupt or truncated WEBP (unreadable header)"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return f"corrupt or truncated {fmt} (unreadable header)"
    return "not an image (unrecognised format)"


def _orientation(im: Image.Image) -> int | None:
    """EXIF orientation (1 when absent); None when the EXIF block is unreadable."""
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # malformed EXIF: decoders may disagree on it, so strip it
        return None


def fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """``(w, h)`` scaled so ``max(w, h) <= max_side``, or None if it fits already.

    >>> fit_size(4000, 3000, 256)
    (256, 192)
    >>> fit_size(100, 50, 256) is None
    True
    """
    if max_side is None or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return (min(max_side, max(1, round(width * scale))),
            min(max_side, max(1, round(height * scale))))


def _to_8bit(im: Image.Image, png_depth: int | None) -> Image.Image:
    """16-bit / 32-bit grayscale to L, scaling 16-bit values rather than clipping."""
    a = np.asarray(im)
    if im.mode in _SIXTEEN_BIT_MODES or (im.mode == "I" and png_depth == 16):
        a = a.astype(np.uint32) >> 8
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def _keep_bytes(fmt: str | None, im: Image.Image, png_depth: int | None,
                orientation: int | None, target: tuple[int, int] | None) -> bool:
    if target is not None or orientation != 1 or im.mode not in _KEEP_MODES:
        return False
    if fmt == "JPEG":
        return True
    return fmt == "PNG" and png_depth == 8


def check_bytes(data: bytes, *, max_side: int | None = None, quality: int = 95) -> CheckedImage:
    """:func:`check_image` on bytes already in memory.

    >>> import io
    >>> buf = io.BytesIO(); Image.new("RGBA", (4, 2)).save(buf, "PNG")
    >>> check_bytes(buf.getvalue()).converted
    'rgba->rgb,png->jpeg'
    """
    # Pillow warns about e.g. palette transparency or huge images; the outcome
    # is in `converted` / BadImage, so the warnings would only be noise.
    with warnings.catch_warnings(), strict_truncation():
        warnings.simplefilter("ignore")
        return _check(data, max_side, quality)


def _load(im: Image.Image, fmt: str | None) -> None:
    try:
        im.load()
    except Exception as e:  # decoders of untrusted files raise anything; one file must not stop a pack
        raise BadImage(f"corrupt or truncated {fmt or 'image'}: {_short(e)}") from None


def _check(data: bytes, max_side: int | None, quality: int) -> CheckedImage:
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage(_unidentified_reason(data)) from None
    except Exception as e:  # broken headers raise all sorts of things
        raise BadImage(f"unreadable image header: {_short(e)}") from None
    fmt = im.format
    target = fit_size(im.width, im.height, max_side)
    # A JPEG's EXIF is in its header; a PNG's may follow the pixels (read after load).
    orientation = _orientation(im) if fmt == "JPEG" else None
    if (fmt == "JPEG" and _keep_bytes(fmt, im, None, orientation, target)
            and jpeg_frame_marker(data) in _HUFFMAN_DCT_FRAMES):
        # Stored as-is, so decoded only to be checked: at 1/8 scale, which
        # finds the same errors for half the CPU (see the module docstring).
        # Rarer kinds (lossless, arithmetic-coded) get the full decode below.
        height, width = im.height, im.width
        im.draft(None, (1, 1))
        _load(im, fmt)
        return CheckedImage(data, height, width, None)
    if target is not None and fmt in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (still reading every byte,
        # so truncation is caught) but no smaller than twice the target: far
        # faster, and Lanczos from there looks the same (as Image.thumbnail does).
        im.draft(None, (2 * target[0], 2 * target[1]))
    _load(im, fmt)

    png_depth = _png_bit_depth(data)
    if fmt != "JPEG":
        orientation = _orientation(im)
    if _keep_bytes(fmt, im, png_depth, orientation, target):
        return CheckedImage(data, im.height, im.width, None)

    steps = []
    if orientation in _SWAPS_AXES and target is not None:
        target = (target[1], target[0])
    if orientation is None or orientation not in range(1, 9):
        steps.append("exif-strip")  # re-encoding below drops EXIF
    elif orientation != 1:
        im = ImageOps.exif_transpose(im)
        steps.append("exif-rotate")
    mode = im.mode
    try:
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            sixteen = mode in _SIXTEEN_BIT_MODES or png_depth == 16
            im = _to_8bit(im, png_depth)
            steps.append("16bit->8bit" if sixteen else f"{mode.lower()}->l")
        elif mode not in _KEEP_MODES:
            im = im.convert("RGB")
            steps.append(f"{mode.lower()}->rgb")
        elif fmt == "PNG" and png_depth == 16:
            steps.append("16bit->8bit")  # Pillow already kept the high bytes
    except Exception as e:
        raise BadImage(f"cannot convert mode {mode} to RGB: {_short(e)}") from None
    if fmt != "JPEG":
        steps.append(f"{(fmt or 'unknown').lower()}->jpeg")
    if target is not None:
        if im.size != target:
            im = im.resize(target, Image.LANCZOS)
        steps.append("max-side")

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return CheckedImage(buf.getvalue(), im.height, im.width, ",".join(steps))


def check_image(path: str | os.PathLike, *, max_side: int | None = None,
                quality: int = 95) -> CheckedImage:
    """Decode the file at ``path`` (see the module docstring for how) and return what to store for it.

    Raises :class:`BadImage` (with a short ``reason``) for empty, unreadable,
    non-image, corrupt or truncated files. See the module docstring for the
    byte-for-byte vs. convert policy.

    >>> check_image("photos/cat/scan.tif").converted       # doctest: +SKIP
    'tiff->jpeg'
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImage(f"cannot read file: {e.strerror or e}") from None
    return check_bytes(data, max_side=max_side, quality=quality)
