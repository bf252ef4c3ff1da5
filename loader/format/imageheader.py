"""The one home of JPEG / PNG header parsing: the PNG signature, the walk to a JPEG's start-of-frame.

Used by pack's checker (:mod:`loader.convert.imagecheck`: which JPEGs may be checked at reduced
scale, whether a file is big enough for the size its header claims) and by the feed's
:class:`loader.format.recordguard.RecordGuard` (a record's header size against the manifest's).
Reads only the header (a few hundred bytes of a photo), never the pixels.
"""

from __future__ import annotations

import struct

__all__ = ["PNG_SIGNATURE", "header_size", "jpeg_frame", "jpeg_frame_marker"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_frame(data) -> tuple[int, int] | None:
    """``(offset, marker)`` of a JPEG's start-of-frame segment (``marker``: 0xC0 baseline, 0xC2
    progressive, 0xC3 lossless, ...), or None if ``data`` is not a JPEG whose header can be
    walked to one (the scan or the end of the image comes first, a bad segment length, too short).

    >>> jpeg_frame(bytes.fromhex("ffd8 ffe0 0004 0000 ffc2 0003 00".replace(" ", "")))
    (8, 194)
    """
    b = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    n = len(b)
    if n < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:            # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:   # stand-alone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):    # end of image / start of scan before any frame header
            return None
        length = (b[i + 2] << 8) | b[i + 3]
        if length < 2:
            return None
        if marker in _SOF:
            return i, marker
        i += 2 + length
    return None


def jpeg_frame_marker(data) -> int | None:
    """The second byte of a JPEG's start-of-frame marker, or None (see :func:`jpeg_frame`).

    >>> jpeg_frame_marker(bytes.fromhex("ffd8 ffe0 0004 0000 ffc2 0003 00".replace(" ", "")))
    194
    """
    frame = jpeg_frame(data)
    return None if frame is None else frame[1]


def header_size(data) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG's SOF or a PNG's IHDR, or None if the header is not one.

    >>> header_size(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(4) + b"IHDR" + struct.pack(">II", 640, 480))
    (480, 640)
    >>> header_size(b"\\x00\\x00\\x00\\x00") is None
    True
    """
    b = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    n = len(b)
    if n >= 24 and bytes(b[:8]) == PNG_SIGNATURE and bytes(b[12:16]) == b"IHDR":
        w, h = struct.unpack(">II", bytes(b[16:24]))
        return h, w
    frame = jpeg_frame(b)
    if frame is None:
        return None
    i = frame[0]
    if i + 9 > n:
        return None
    return (b[i + 5] << 8) | b[i + 6], (b[i + 7] << 8) | b[i + 8]
