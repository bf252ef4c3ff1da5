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

Suspect JPEGs (:func:`suspect_reason`) decode without an error but are damaged: libjpeg
warns (which Pillow drops) and fills in what is missing. Two kinds are caught: a header
claiming more pixels than the file's bytes can code (checked before decoding), and a scan
cut short with an end-of-image marker after it, whose tail decodes flat grey (value 128):
when the decoded bottom-right pixel is that grey, the file is decoded once more with its end
marker replaced by a few padding bytes, and Pillow's "truncated" then tells fill from image.
Only single-scan sequential JPEGs get that second test (a progressive file cut short keeps a
blurry but whole image). Files over :data:`MAX_FILE_BYTES` are not read at all.

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

from loader.errors import one_line
from loader.format.imageheader import PNG_SIGNATURE, jpeg_frame, jpeg_frame_marker

__all__ = ["MAX_FILE_BYTES", "STORAGE_POLICY", "BadImage", "CheckedImage", "check_bytes", "check_image",
           "jpeg_frame_marker", "read_capped", "strict_truncation", "suspect_reason"]

# The most pack reads of one file: a bigger one is skipped, saying so. Far above any photo or
# scan Pillow decodes by default (MAX_IMAGE_PIXELS, ~89M pixels: ~270 MB as raw 8-bit RGB, a
# few MB as JPEG), and it bounds each pack worker's memory (a 40 GB sparse file in SRC once
# made pack die with MemoryError, naming no file).
MAX_FILE_BYTES = 256 * 2**20

STORAGE_POLICY = """\
Storage policy. Every file is decoded once with Pillow; files that are empty,
over 256 MB, not images, corrupt or truncated are skipped and listed with a
short reason in DST/skipped.tsv (--strict: the first one is an error).
Truncated images are never padded, nor stored when the decoder padded them: a
JPEG cut short with an end marker appended (decodes grey from the cut on) or
whose header claims more pixels than its bytes can hold is "suspect", skipped
too unless kept on request (then listed in DST/suspect.tsv).

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
    suspect: str | None = None    # why the bytes look damaged though they decode (keep_suspect=True)


# Start-of-frame markers of Huffman-coded DCT JPEGs (baseline, extended, progressive):
# the kinds whose reduced-scale decode is well trodden (every thumbnailer uses it).
_HUFFMAN_DCT_FRAMES = (0xC0, 0xC1, 0xC2)


# libjpeg, out of entropy-coded data (the scan cut short, an end-of-image marker after it),
# warns "premature end of data segment", which Pillow drops, and decodes every remaining block
# with zero coefficients: exactly this value in every band, a flat grey tail.
_ZERO_FILL = 128
# Bytes that replace the final end-of-image marker to test whether a grey tail is data or fill:
# more than libjpeg's bit buffer reads ahead (57 bits), far fewer than a cut scan still needs.
_PAD = bytes(8)
_SUSPECT = "suspect JPEG"


def _missing_data(data: bytes, height: int, width: int) -> str | None:
    """Why ``data`` is too small for the size its header claims (a Huffman-coded JPEG spends at
    least 1 bit per 16x16 pixels, whatever the subsampling), or None."""
    frame = jpeg_frame(data)
    if frame is None or frame[1] not in (0xC0, 0xC1, 0xC2, 0xC3):   # arithmetic coding can go lower
        return None
    need = (width // 16) * (height // 16) // 8
    if len(data) >= need:
        return None
    return (f"{_SUSPECT}: its header claims {height}x{width} pixels (height x width) but the file has "
            f"only {len(data):,} bytes, fewer than the {need:,} that many pixels need at least: its "
            f"image data is missing")


def _zero_filled_corner(im: Image.Image) -> bool:
    """Whether the bottom-right pixel is libjpeg's fill value in every band (cheap first test)."""
    if im.mode not in _KEEP_MODES or not im.width or not im.height:
        return False
    px = im.im.getpixel((im.width - 1, im.height - 1))   # the core's: Image.getpixel would load() again
    return all(v == _ZERO_FILL for v in (px if isinstance(px, tuple) else (px,)))


def _ends_early(data: bytes) -> bool:
    """Whether the scan of ``data`` stops before the image does (its end filled in as grey).

    Decodes (at 1/8 scale) with the last end-of-image marker replaced by :data:`_PAD`: a complete
    scan never reads those bytes as pixels, a cut one runs out and Pillow says "truncated".
    Single-scan sequential frames only: libjpeg reads a progressive or multi-scan file to its
    end-of-image marker before it outputs a row, so without one every such file is "truncated".
    """
    frame = jpeg_frame(data)
    if frame is None or frame[1] not in (0xC0, 0xC1) or data.count(b"\xff\xda", frame[0]) != 1:
        return False
    k = data.rfind(b"\xff\xd9")
    if k < data.find(b"\xff\xda", frame[0]):   # no end marker after the scan (one in a thumbnail is not it)
        return False
    im = Image.open(io.BytesIO(data[:k] + _PAD))
    im.draft(None, (1, 1))
    try:
        im.load()
    except OSError as e:
        return "truncated" in str(e)
    except Exception:   # noqa: BLE001 - any other failure says nothing about the original's tail
        return False
    return False


def _grey_tail(im: Image.Image, data: bytes) -> str | None:
    """Why the decoded ``im`` of ``data`` ends in filled-in grey rather than image data, or None."""
    if not _zero_filled_corner(im) or not _ends_early(data):
        return None
    a = np.asarray(im)
    rows = (a == _ZERO_FILL).reshape(a.shape[0], -1).all(axis=1)
    tail = int(np.argmin(rows[::-1])) if not rows.all() else len(rows)
    return (f"{_SUSPECT}: its data stops early (premature end of data) and the bottom "
            f"{max(1, round(100 * tail / len(rows)))}% decodes as flat grey; re-export or re-download it")


def suspect_reason(data: bytes) -> str | None:
    """Why the JPEG ``data`` decodes but is damaged, or None (also for anything not a JPEG).

    Two kinds pack skips (``keep_suspect=False``) and ``loader verify`` reports: a header that
    claims far more pixels than the file holds, and a scan cut short with an end-of-image marker
    after it, which decoders fill with flat grey, warning only. Decodes at 1/8 scale.

    >>> suspect_reason(b"not a jpeg") is None
    True
    """
    if data[:3] != b"\xff\xd8\xff":
        return None
    with warnings.catch_warnings(), strict_truncation():
        warnings.simplefilter("ignore")
        try:
            im = Image.open(io.BytesIO(data))
            reason = _missing_data(data, im.height, im.width)
            if reason is not None:
                return reason
            im.draft(None, (1, 1))
            im.load()
        except Exception:   # noqa: BLE001 - undecodable is the decoder check's verdict, not this one's
            return None
        return _grey_tail(im, data)


def _png_bit_depth(data: bytes) -> int | None:
    """Bit depth from the PNG IHDR chunk (Pillow reads 16-bit RGB as 8-bit RGB)."""
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) > 24:
        return data[24]
    return None


_MAGIC = [(b"\xff\xd8\xff", "JPEG"), (PNG_SIGNATURE, "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
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


def check_bytes(data: bytes, *, max_side: int | None = None, quality: int = 95,
                keep_suspect: bool = False) -> CheckedImage:
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
        return _check(data, max_side, quality, keep_suspect)


def _load(im: Image.Image, fmt: str | None) -> None:
    try:
        im.load()
    except Exception as e:  # decoders of untrusted files raise anything; one file must not stop a pack
        raise BadImage(f"corrupt or truncated {fmt or 'image'}: {one_line(e, limit=160)}") from None


def _check(data: bytes, max_side: int | None, quality: int, keep_suspect: bool) -> CheckedImage:
    suspect = None

    def found(reason: str | None) -> None:
        nonlocal suspect
        if reason is not None and suspect is None:
            if not keep_suspect:
                raise BadImage(reason)
            suspect = reason

    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage(_unidentified_reason(data)) from None
    except Exception as e:  # broken headers raise all sorts of things
        raise BadImage(f"unreadable image header: {one_line(e, limit=160)}") from None
    fmt = im.format
    if fmt == "JPEG":   # before decoding: such a header may claim gigapixels
        found(_missing_data(data, im.height, im.width))
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
        found(_grey_tail(im, data))
        return CheckedImage(data, height, width, None, suspect)
    if target is not None and fmt in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (still reading every byte,
        # so truncation is caught) but no smaller than twice the target: far
        # faster, and Lanczos from there looks the same (as Image.thumbnail does).
        im.draft(None, (2 * target[0], 2 * target[1]))
    _load(im, fmt)
    if fmt == "JPEG":
        found(_grey_tail(im, data))

    png_depth = _png_bit_depth(data)
    if fmt != "JPEG":
        orientation = _orientation(im)
    if _keep_bytes(fmt, im, png_depth, orientation, target):
        return CheckedImage(data, im.height, im.width, None, suspect)

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
        raise BadImage(f"cannot convert mode {mode} to RGB: {one_line(e, limit=160)}") from None
    if fmt != "JPEG":
        steps.append(f"{(fmt or 'unknown').lower()}->jpeg")
    if target is not None:
        if im.size != target:
            im = im.resize(target, Image.LANCZOS)
        steps.append("max-side")

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return CheckedImage(buf.getvalue(), im.height, im.width, ",".join(steps), suspect)


def read_capped(f, size: int) -> bytes:
    """All of the open binary file ``f`` whose size is ``size`` (from ``fstat``); :class:`BadImage` if
    it is over :data:`MAX_FILE_BYTES`. Reads at most one byte over the cap, whatever the file says."""
    if size <= MAX_FILE_BYTES:
        data = f.read(MAX_FILE_BYTES + 1)
        size = len(data)
    if size > MAX_FILE_BYTES:
        raise BadImage(f"file is {size:,} bytes, over the per-file cap of {MAX_FILE_BYTES:,} "
                       f"(MAX_FILE_BYTES); shrink or split it, or leave it out of SRC")
    return data


def check_image(path: str | os.PathLike, *, max_side: int | None = None,
                quality: int = 95, keep_suspect: bool = False) -> CheckedImage:
    """Decode the file at ``path`` (see the module docstring for how) and return what to store for it.

    Raises :class:`BadImage` (with a short ``reason``) for empty, unreadable,
    non-image, corrupt or truncated files. See the module docstring for the
    byte-for-byte vs. convert policy.

    >>> check_image("photos/cat/scan.tif").converted       # doctest: +SKIP
    'tiff->jpeg'
    """
    try:
        with open(path, "rb") as f:
            data = read_capped(f, os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise BadImage(f"cannot read file: {e.strerror or e}") from None
    return check_bytes(data, max_side=max_side, quality=quality, keep_suspect=keep_suspect)
