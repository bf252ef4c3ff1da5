"""Write a class-per-folder dataset of photo-like JPEGs, deterministic by seed.

Benchmarks need images that decode like photographs: random noise decodes
atypically slowly (no run-length wins in the entropy coder) and flat colour
atypically fast. Natural images have a power spectrum close to 1/f^2; we
synthesise such fields (luminance plus weaker chroma), add a sky-like gradient,
a few textured objects with soft edges, and encode at ImageNet-like sizes
(~500x400) and JPEG qualities (75-95). That lands near ImageNet's mean file
size per pixel (~50 KB at 500x375).

Each class has its own palette and texture orientation, so a small CNN can learn
the classes (scripts/train_example.py relies on that).

    python scripts/make_dataset.py DST --classes 10 --per-class 300 --seed 0

Tests, benchmarks and scripts all import it from here (the package is the one
place every one of them can import from).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from loader.units import MB, available_cores

__all__ = ["make_dataset", "make_tiny_dataset", "photo_like_image"]


def _pink_field(rng: np.random.Generator, h: int, w: int, alpha: float, angle: float,
                anisotropy: float) -> np.ndarray:
    """A zero-mean, unit-std random field whose power falls off as 1/f^(2*alpha)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    # Stretch the spectrum along one direction: textures get a dominant orientation.
    c, s = np.cos(angle), np.sin(angle)
    u = fx * c + fy * s
    v = -fx * s + fy * c
    f = np.sqrt((u * anisotropy) ** 2 + (v / anisotropy) ** 2)
    f[0, 0] = 1.0
    amp = 1.0 / f**alpha
    amp[0, 0] = 0.0
    phase = rng.uniform(0, 2 * np.pi, amp.shape)
    field = np.fft.irfft2(amp * np.exp(1j * phase), s=(h, w))
    return (field - field.mean()) / (field.std() + 1e-12)


def _class_style(label: int, num_classes: int) -> tuple[np.ndarray, float]:
    """Base RGB colour and texture angle for a class (fixed, not random)."""
    hue = label / max(num_classes, 1)
    # Simple HSV->RGB for a saturated mid-brightness colour.
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    rgb = 0.62 - 0.42 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb * 255.0, np.pi * label / max(num_classes, 1)


def photo_like_image(seed: int, label: int = 0, num_classes: int = 1,
                     size: tuple[int, int] | None = None) -> Image.Image:
    """One deterministic photo-like RGB image for ``(seed, label)``.

    >>> photo_like_image(3, label=1, num_classes=4).mode
    'RGB'
    """
    rng = np.random.default_rng([seed, label, 7919])
    if size is None:
        w = int(rng.integers(400, 601))
        h = int(rng.integers(300, 501))
    else:
        w, h = size
    base, angle = _class_style(label, num_classes)
    angle += rng.normal(0, 0.15)
    alpha = rng.uniform(1.2, 1.4)

    lum = _pink_field(rng, h, w, alpha, angle, anisotropy=rng.uniform(1.5, 2.5))
    chroma = np.stack([_pink_field(rng, h, w, alpha + 0.2, angle, 1.0) for _ in range(2)], -1)
    # Luminance carries most of the detail, as in photographs.
    img = base[None, None, :] + 38.0 * lum[..., None]
    img += 14.0 * (chroma @ np.array([[1.0, -0.5, -0.5], [0.0, 0.87, -0.87]]))

    # Sky-like vertical gradient.
    grad = np.linspace(rng.uniform(-30, 30), rng.uniform(-30, 30), h)[:, None, None]
    img += grad

    # A few objects with soft edges and their own texture (one texture field,
    # shifted per object: FFTs dominate the cost of this generator).
    tex_field = 25.0 * _pink_field(rng, h, w, alpha, rng.uniform(0, np.pi), 1.0)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 10, h / 3), rng.uniform(w / 10, w / 3)
        y0, y1 = max(int(cy - 1.1 * ry), 0), min(int(cy + 1.1 * ry) + 1, h)
        x0, x1 = max(int(cx - 1.1 * rx), 0), min(int(cx + 1.1 * rx) + 1, w)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        mask = np.clip((1.2 - d) * 4.0, 0.0, 1.0)[..., None]
        colour = base * rng.uniform(0.4, 1.3) + rng.normal(0, 40, 3)
        shift = (int(rng.integers(0, h)), int(rng.integers(0, w)))
        tex = np.roll(tex_field, shift, axis=(0, 1))[y0:y1, x0:x1, None]
        region = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = region * (1 - mask) + (colour[None, None, :] + tex) * mask

    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _write_one(job: tuple[str, int, int, int, int]) -> int:
    path, seed, label, num_classes, quality = job
    im = photo_like_image(seed, label, num_classes)
    im.save(path, "JPEG", quality=quality)
    return os.path.getsize(path)


def make_dataset(dst: str | os.PathLike, classes: int = 10, per_class: int = 100,
                 seed: int = 0, workers: int | None = None) -> list[Path]:
    """Write ``classes * per_class`` JPEGs under ``dst/class_XX/`` and return their paths.

    Deterministic: the same arguments always give byte-identical files.
    Existing files with the expected name are left alone (cheap re-runs).

    >>> paths = make_dataset("/tmp/ds", classes=2, per_class=3)  # doctest: +SKIP
    """
    dst = Path(dst)
    jobs = []
    paths = []
    for c in range(classes):
        cdir = dst / f"class_{c:02d}"
        cdir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = cdir / f"img_{i:05d}.jpg"
            paths.append(p)
            if p.exists():
                continue
            img_seed = seed * 1_000_003 + c * 100_003 + i
            quality = int(np.random.default_rng([img_seed, 1]).integers(75, 96))
            jobs.append((str(p), img_seed, c, classes, quality))
    if jobs:
        workers = workers or available_cores()
        if workers == 1:
            for j in jobs:
                _write_one(j)
        else:
            with ProcessPoolExecutor(workers) as ex:
                list(ex.map(_write_one, jobs, chunksize=16))
    return paths


def make_tiny_dataset(dst: str | os.PathLike, num_images: int, classes: int = 1000, *,
                      distinct: int = 2000, side: int = 68, quality: int = 90) -> int:
    """Write ``num_images`` small photo-like JPEGs (~2.7 KB at ``side`` 68) under
    ``dst/cNNNN/``, ``classes`` folders filled in turn; return the bytes written.

    For scale tests (ImageNet-sized counts on a laptop): ``distinct`` images are
    encoded once and their bytes cycled, so writing costs file creation, not
    encoding. Every file still decodes like a photo. Deterministic; files that
    exist are left alone.

    >>> make_tiny_dataset("/tmp/tiny", 1_281_000)            # doctest: +SKIP
    """
    import io

    dst = Path(dst)
    pool = []
    for k in range(min(distinct, num_images)):
        buf = io.BytesIO()
        photo_like_image(k, k % classes, classes, size=(side, side)).save(buf, "JPEG", quality=quality)
        pool.append(buf.getvalue())
    total = 0
    for c in range(classes):
        (dst / f"c{c:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        c = i % classes
        p = dst / f"c{c:04d}" / f"{i // classes:07d}.jpg"
        data = pool[i % len(pool)]
        total += len(data)
        if not p.exists():
            p.write_bytes(data)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dst", help="output folder (created; one sub-folder per class)")
    ap.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    ap.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    if args.classes < 1 or args.per_class < 1:
        print("error: --classes and --per-class must be >= 1", file=sys.stderr)
        return 2
    try:
        paths = make_dataset(args.dst, args.classes, args.per_class, args.seed, args.workers)
    except OSError as e:
        print(f"error: cannot write the dataset to {args.dst}: {e.strerror or e}", file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} images in {args.classes} classes at {args.dst} "
          f"({total / MB:.1f} MB, {total / len(paths) / 1e3:.0f} KB/image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
