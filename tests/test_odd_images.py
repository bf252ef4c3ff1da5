"""Unusual formats and modes: what is stored byte-for-byte, what is converted,
and that every stored record decodes with DALI at the manifest's size."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, features

from loader import open_dataset, pack
from loader.check.decodecheck import DecodeCheck
from loader.check.verify import verify
from loader.convert.imagecheck import BadImage, check_bytes, check_image, fit_size
from loader.synthetic import photo_like_image

HAS_WEBP = features.check("webp")
# A 1x1 lossless WebP (the classic feature-detection image): usable even
# where Pillow cannot write WebP.
WEBP_1X1 = bytes.fromhex("524946461a000000574542505650384c0d0000002f0000001007101111888808fe0700")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_rgb16(arr: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def photo(w, h, seed=0):
    return photo_like_image(seed, size=(w, h))


def exif_rotated_jpeg(orientation=6, size=(96, 64)) -> bytes:
    im = photo(*size, seed=5)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


def odd_files() -> dict[str, tuple[bytes, str | None]]:
    """file name -> (bytes, expected `converted`)."""
    rgb = photo(96, 64, seed=1)
    g16 = (np.arange(64 * 96, dtype=np.uint32).reshape(64, 96) * 10).astype(np.uint16)
    rgb16 = (np.asarray(rgb, np.uint16) * 257)[..., :3]
    big = photo(80, 60, seed=3).resize((4000, 3000), Image.BILINEAR)
    files = {
        "rgb.jpg": (encode(rgb, "JPEG", quality=90), None),
        "gray.jpg": (encode(rgb.convert("L"), "JPEG"), None),
        "rgb.png": (encode(rgb, "PNG"), None),
        "gray.png": (encode(rgb.convert("L"), "PNG"), None),
        "tiny.jpg": (encode(Image.new("RGB", (1, 1), (200, 30, 10)), "JPEG"), None),
        "tiny.png": (encode(Image.new("RGB", (1, 1), (200, 30, 10)), "PNG"), None),
        "large.jpg": (encode(big, "JPEG", quality=85), None),
        "cmyk.jpg": (encode(rgb.convert("CMYK"), "JPEG", quality=95), "cmyk->rgb"),
        "rotated.jpg": (exif_rotated_jpeg(6), "exif-rotate"),
        "rgba.png": (encode(rgb.convert("RGBA"), "PNG"), "rgba->rgb,png->jpeg"),
        "la.png": (encode(rgb.convert("LA"), "PNG"), "la->rgb,png->jpeg"),
        "palette.png": (encode(rgb.convert("P"), "PNG"), "p->rgb,png->jpeg"),
        "bilevel.png": (encode(rgb.convert("1"), "PNG"), "1->rgb,png->jpeg"),
        "gray16.png": (encode(Image.fromarray(g16), "PNG"), "16bit->8bit,png->jpeg"),
        "rgb16.png": (png_rgb16(rgb16), "16bit->8bit,png->jpeg"),
        "anim.gif": (encode(rgb.convert("P"), "GIF", save_all=True,
                            append_images=[photo(96, 64, seed=9).convert("P")]), "p->rgb,gif->jpeg"),
        "image.bmp": (encode(rgb, "BMP"), "bmp->jpeg"),
        "image.tiff": (encode(rgb, "TIFF"), "tiff->jpeg"),
        "image.webp": (WEBP_1X1, "webp->jpeg"),
    }
    return files


def expected_pixels(data: bytes) -> np.ndarray:
    """What the stored image should look like: upright, RGB (or L), 8-bit."""
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if im.mode in ("I;16", "I"):
        return (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
    return np.asarray(im if im.mode == "L" else im.convert("RGB"))


@pytest.fixture(scope="module")
def odd_packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    files = odd_files()
    for name, (data, _) in files.items():
        (root / "src" / "odd").mkdir(parents=True, exist_ok=True)
        (root / "src" / "odd" / name).write_bytes(data)
    report = pack(root / "src", root / "dst", workers=2, progress=False)
    return root, files, report, open_dataset(root / "dst")


def test_what_is_converted(odd_packed):
    _, files, report, ds = odd_packed
    got = {ds.source(i).split("/")[-1]: ds.manifest.converted(i) for i in range(len(ds))}
    expected = {name: conv for name, (_, conv) in files.items()}
    if not HAS_WEBP:  # this Pillow build cannot read WebP: reported, not stored
        del expected["image.webp"]
        assert report.skipped == (("odd/image.webp",
                                   "WebP is not supported by this Pillow build (install Pillow with WebP)"),)
    assert got == expected


def test_kept_files_are_byte_identical_converted_are_jpeg(odd_packed):
    _, files, _, ds = odd_packed
    for i in range(len(ds)):
        name = ds.source(i).split("/")[-1]
        stored = ds.read(i)
        if files[name][1] is None:
            assert stored == files[name][0], name
        else:
            assert stored[:3] == b"\xff\xd8\xff", name  # re-encoded as JPEG
            im = Image.open(io.BytesIO(stored))
            assert "exif" not in im.info or im.getexif().get(0x0112, 1) == 1


def test_pixels_match_upright_source(odd_packed):
    _, files, _, ds = odd_packed
    for i in range(len(ds)):
        name = ds.source(i).split("/")[-1]
        if files[name][1] is None:
            continue  # byte-identical to the source (checked above)
        stored = np.asarray(Image.open(io.BytesIO(ds.read(i))))
        want = expected_pixels(files[name][0])
        assert stored.shape == want.shape, name
        assert stored.shape[:2] == (ds.heights[i], ds.widths[i]), name
        # Dithered palette / bilevel images are all hard edges: JPEG errs more there
        # (a wrong frame, orientation or channel order would be off by ~50).
        tolerance = 12 if name in ("bilevel.png", "palette.png", "anim.gif") else 5
        assert np.abs(stored.astype(int) - want.astype(int)).mean() < tolerance, name


def test_exif_rotation_applied(odd_packed):
    _, files, _, ds = odd_packed
    i = [ds.source(k) for k in range(len(ds))].index("odd/rotated.jpg")
    raw = Image.open(io.BytesIO(files["rotated.jpg"][0]))
    assert raw.size == (96, 64)  # pixel array as stored in the source: landscape
    assert (int(ds.heights[i]), int(ds.widths[i])) == (96, 64)  # upright: portrait
    stored = Image.open(io.BytesIO(ds.read(i)))
    assert stored.getexif().get(0x0112) is None


def test_every_record_decodes_with_dali_at_manifest_size(odd_packed):
    root, _, _, ds = odd_packed
    check = DecodeCheck(batch_size=64)
    shapes = check.shapes(ds.read_batch(range(len(ds))))
    for i, shape in enumerate(shapes):
        assert shape == (ds.heights[i], ds.widths[i], 3), (ds.source(i), shape)
    assert check.check(ds, range(len(ds))) == []
    assert verify(root / "dst", progress=False) == []


def test_large_image_kept_and_sized(odd_packed):
    _, _, _, ds = odd_packed
    i = [ds.source(k) for k in range(len(ds))].index("odd/large.jpg")
    assert (int(ds.heights[i]), int(ds.widths[i])) == (3000, 4000)
    assert ds.manifest.converted(i) is None


# ------------------------------------------------------------------ check_image directly


def test_max_side_with_rotation():
    c = check_bytes(exif_rotated_jpeg(6, size=(96, 64)), max_side=32)
    assert c.converted == "exif-rotate,max-side"
    assert (c.height, c.width) == (32, 21)  # upright 64x96 scaled to max side 32
    assert Image.open(io.BytesIO(c.data)).size == (21, 32)


def test_max_side_draft_on_large_jpeg():
    data = encode(photo(80, 60).resize((2000, 1500), Image.BILINEAR), "JPEG")
    c = check_bytes(data, max_side=100, quality=80)
    assert (c.height, c.width, c.converted) == (75, 100, "max-side")
    want = np.asarray(Image.open(io.BytesIO(data)).resize((100, 75), Image.LANCZOS), np.int16)
    got = np.asarray(Image.open(io.BytesIO(c.data)), np.int16)
    assert np.abs(got - want).mean() < 6  # JPEG q80 of a small textured image


def test_small_images_not_upscaled():
    data = encode(photo(40, 30), "PNG")
    c = check_bytes(data, max_side=64)
    assert c.converted is None and c.data == data


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file (0 bytes)"),
    (b"hello world", "not an image (unrecognised format)"),
    (encode(Image.new("RGB", (50, 50)), "PNG")[:60], "corrupt or truncated PNG"),
    (encode(photo(64, 48), "JPEG")[:-300], "corrupt or truncated JPEG: image file is truncated"),
    (b"GIF89a" + b"\x00" * 4, "corrupt or truncated GIF"),
])
def test_bad_images(data, reason):
    with pytest.raises(BadImage) as e:
        check_bytes(data)
    assert e.value.reason.startswith(reason), e.value.reason


def test_check_image_reads_files(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(encode(photo(64, 48), "JPEG"))
    c = check_image(p)
    assert (c.height, c.width, c.converted) == (48, 64, None) and c.data == p.read_bytes()
    with pytest.raises(BadImage, match="cannot read file"):
        check_image(tmp_path / "missing.jpg")


def test_fit_size():
    assert fit_size(4000, 3000, 256) == (256, 192)
    assert fit_size(3000, 4000, 256) == (192, 256)
    assert fit_size(10000, 10, 100) == (100, 1)
    assert fit_size(256, 100, 256) is None and fit_size(300, 200, None) is None


# ------------------------------------------------------------------ reduced-scale check of kept JPEGs


def _jpeg_variants() -> list[bytes]:
    """Photo-like JPEGs of every kind libjpeg decodes differently."""
    out = []
    for seed in range(3):
        im = photo(160, 120, seed=seed)
        out += [encode(im, "JPEG", quality=90),                     # baseline 4:2:0
                encode(im, "JPEG", quality=95, subsampling=0),      # 4:4:4
                encode(im, "JPEG", quality=85, progressive=True),
                encode(im, "JPEG", quality=90, optimize=True),       # optimised Huffman tables
                encode(im.convert("L"), "JPEG", quality=90),
                encode(im.convert("L"), "JPEG", quality=90, progressive=True)]
    return out


def _damage(data: bytes, rng: np.random.Generator) -> bytes:
    d = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:                                      # truncated
        return bytes(d[:rng.integers(len(d))])
    if kind == 1:                                      # a few bytes overwritten
        for _ in range(rng.integers(1, 10)):
            d[rng.integers(len(d))] = rng.integers(256)
        return bytes(d)
    a = int(rng.integers(len(d)))
    b = min(len(d), a + int(rng.integers(1, 2000)))
    if kind == 2:                                      # a run zeroed
        d[a:b] = bytes(b - a)
        return bytes(d)
    return bytes(d[:a] + d[b:])                        # a run cut out


def _full_decode_fails(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data)).load()
    except Exception:
        return True
    return False


def test_kept_jpegs_checked_at_reduced_scale_find_exactly_what_full_decode_finds():
    """check_bytes decodes a JPEG it stores as-is at 1/8 scale; on randomly
    damaged JPEGs its verdict must equal a full decode's, case by case (suspect JPEGs, which
    decode, kept: that check is the same at both scales, tests/test_hostile_input.py)."""
    rng = np.random.default_rng(0)
    variants = _jpeg_variants()
    verdicts = {(True, True): 0, (False, False): 0}
    for _ in range(600):
        data = _damage(variants[rng.integers(len(variants))], rng)
        try:
            check_bytes(data, keep_suspect=True)
            bad = False
        except BadImage:
            bad = True
        full_bad = _full_decode_fails(data)
        assert bad == full_bad, f"reduced-scale check says bad={bad}, a full decode says bad={full_bad}"
        verdicts[bad, full_bad] += 1
    # Both outcomes well represented, so the comparison means something.
    assert min(verdicts.values()) > 100, verdicts


@pytest.fixture
def decoded_sizes(monkeypatch):
    """The size every JPEG decode in the test runs at, in order."""
    from PIL.JpegImagePlugin import JpegImageFile

    sizes = []
    load = JpegImageFile.load

    def spy(im):
        sizes.append(im.size)
        return load(im)
    monkeypatch.setattr(JpegImageFile, "load", spy)
    return sizes


def with_frame_marker(data: bytes, marker: int) -> bytes:
    i = data.index(b"\xff\xc0")             # the encoder writes a baseline frame
    return data[:i + 1] + bytes([marker]) + data[i + 2:]


def test_kept_jpeg_reports_full_size_and_undamaged_bytes(decoded_sizes):
    data = encode(photo(157, 93, seed=4), "JPEG", quality=90)
    c = check_bytes(data)
    assert (c.height, c.width, c.converted) == (93, 157, None) and c.data == data
    assert decoded_sizes == [(20, 12)]     # really checked at 1/8 scale


@pytest.mark.parametrize("marker, scaled", [(0xC1, True), (0xC3, False), (0xC9, False)])
def test_only_huffman_dct_jpegs_are_checked_at_reduced_scale(decoded_sizes, marker, scaled):
    """Extended sequential (C1) decodes like baseline; lossless (C3) and
    arithmetic-coded (C9) frames are rare enough to always get the full decode."""
    from loader.convert.imagecheck import jpeg_frame_marker

    data = with_frame_marker(encode(photo(157, 93, seed=4), "JPEG", quality=90), marker)
    assert jpeg_frame_marker(data) == marker
    try:
        check_bytes(data)
        bad = False
    except BadImage:
        bad = True
    assert decoded_sizes[0] == ((20, 12) if scaled else (157, 93))
    assert bad == _full_decode_fails(data)
