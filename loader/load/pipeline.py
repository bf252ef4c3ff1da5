"""The DALI pipeline: encoded records in, augmented fixed-size batches out.

One graph for every case (:func:`image_graph`), with the device as a parameter:

    feed (bytes, crop window, flip, label, index)     <- loader.load.feed.EpochFeed
      -> decoders.image_slice   decode only the crop window ("mixed" = nvJPEG on CUDA)
      -> resize to image_size   (GPU: fn.resize; CPU: torch's uint8 kernel, see below)
      -> crop_mirror_normalize  flip, normalize, cast, HWC -> CHW (GPU; CPU: see below)

Crop windows and flips are drawn in numpy (loader.load.sampler.crop_windows) from
(seed, epoch, position) rather than by DALI's RNG, so a resumed run, every DDP
rank and the CPU and GPU graphs all agree on the augmentation of a sample, and
train and eval share the graph (eval's window is the centre crop).

On the CPU the DALI graph stops after the region decode;
:class:`loader.load.finisher.CpuFinisher` (its own module: torch, not DALI) resizes, flips and
normalizes each crop straight into the torch batch. The GPU graph stays pure DALI.

On the GPU the decode has two shapes (``gpu_decode``, see :func:`resolve_gpu_decode`):
"roi" decodes only the window (``decoders.image_slice``, nvImageCodec's region
decode); "full" decodes the whole image (``decoders.image``) and crops it on the
GPU (``fn.slice``). Both give the same window of the same decoded pixels; "full"
avoids nvImageCodec's region path, which NVIDIA/nvImageCodec#55 reports failing
(A100) or crashing (H100) in nvImageCodec 0.9.0. The nvJPEG arguments of both
are set by :func:`nvjpeg_arguments`; docs/gpu.md cites what each choice rests on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from loader.units import NVIMGCODEC_WHEELS, dist_version

__all__ = ["image_graph", "build_pipeline", "DALI_DTYPES", "GpuDecode", "nvjpeg_arguments",
           "resolve_gpu_decode", "nvimgcodec_version"]


# torch dtype name -> DALI output type of crop_mirror_normalize.
DALI_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "uint8": types.UINT8}

GpuDecode = Literal["auto", "roi", "full"]
GPU_DECODES = ("auto", "roi", "full")

# nvImageCodec releases whose GPU region decode NVIDIA/nvImageCodec#55 (open) reports broken:
# 0.9.0 (with DALI 2.3.0) errors with INTERNAL_ERROR on A100 and crashes on H100, where 0.8.0
# works. DALI 2.4.0 resolves to nvidia-nvimgcodec-cu12 0.9.0.20, the same line.
_ROI_BROKEN_NVIMGCODEC = ((0, 9),)


def nvimgcodec_version() -> str | None:
    """The installed nvImageCodec wheel's version (``nvidia-nvimgcodec-cu12`` / ``-cu13``), or None."""
    return dist_version(*NVIMGCODEC_WHEELS)


def resolve_gpu_decode(gpu_decode: str, nvimgcodec: str | None = None) -> Literal["roi", "full"]:
    """What "auto" means here: "full" while the installed nvImageCodec is one #55 names, else "roi".

    "roi" is the better design (only the window's pixels are decoded and
    stored), so it is the choice once nvImageCodec's region decode is
    trustworthy; until then a crash-free GPU path wins over an unmeasured
    speed-up. ``nvimgcodec`` defaults to the installed version.
    """
    if gpu_decode not in GPU_DECODES:
        raise ValueError(f"gpu_decode must be one of {', '.join(map(repr, GPU_DECODES))}, got {gpu_decode!r}")
    if gpu_decode != "auto":
        return gpu_decode
    version = nvimgcodec if nvimgcodec is not None else nvimgcodec_version()
    if version is None:
        return "roi"
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return "full"      # a version we cannot read: take the path no report implicates
    return "full" if major_minor in _ROI_BROKEN_NVIMGCODEC else "roi"


# DALI 2.4's defaults for the mixed decoder's nvJPEG buffers (fn.decoders.image_slice docs).
_DEVICE_PADDING = 16 * 2**20
_HOST_PADDING = 8 * 2**20
_PADDING_CAP = 256 * 2**20


def nvjpeg_arguments(max_height: int = 0, max_width: int = 0) -> dict:
    """The mixed (nvJPEG) decoder's arguments, for a dataset whose largest image is ``max_height x max_width``.

    Every value is set on purpose rather than left to a DALI default that may move
    (hw_decoder_load did, 0.65 -> 0.90 -> 0.65):

    - ``hw_decoder_load=0.65``: the share of images sent to the hardware JPEG decoder.
      NVIDIA/DALI#6366 restored 0.65 after measuring 0.90: +1.8% throughput but the
      worst decode latency 31 -> 73 ms (p99 24.5 -> 34.3 ms). A training step waits for
      its slowest batch, so steady latency is worth more than 1.8%.
    - ``jpeg_fancy_upsampling=True``: nvJPEG upsamples chroma the way libjpeg-turbo does
      (DALI docs: "same chroma upsampling approach as the cpu one"), so the GPU path's
      pixels track the CPU path's (Pillow / DALI CPU, both libjpeg-turbo with fancy
      upsampling). nvImageCodec's own default is fancy upsampling on
      (extensions/nvjpeg/nvjpeg_utils.cpp, v0.8.0); DALI's is off. Cost not measured yet.
    - ``use_fast_idct=False``: the CPU fallback inside the mixed decoder keeps the
      accurate IDCT, as on the CPU path.
    - ``preallocate_width_hint`` / ``preallocate_height_hint``: the largest image of the
      dataset (from the manifest), so the hardware decoder allocates once, not when
      the first large image arrives mid-epoch (DALI docs: "used to preallocate memory
      for the HW JPEG decoder"; 0 = no hint).
    - ``device_memory_padding`` / ``host_memory_padding``: DALI's 16 / 8 MiB, raised to one
      RGB copy of the largest image (capped at 256 MiB) so nvJPEG's per-thread buffers
      never reallocate (DALI docs; DALI's ImageNet example used 211 / 140 MB for
      unbounded ImageNet, NVIDIA/DALI#3160).
    - ``affine=False``: DALI would pin each decoder thread to a core; with several ranks
      per node every rank would pin to the same first cores.
    """
    rgb = 3 * max(int(max_height), 0) * max(int(max_width), 0)
    return dict(hw_decoder_load=0.65, jpeg_fancy_upsampling=True, use_fast_idct=False,
                preallocate_width_hint=max(int(max_width), 0), preallocate_height_hint=max(int(max_height), 0),
                device_memory_padding=min(max(_DEVICE_PADDING, rgb), _PADDING_CAP),
                host_memory_padding=min(max(_HOST_PADDING, rgb), _PADDING_CAP),
                affine=False)


def image_graph(source, *, device: str, image_size: int, dtype: str = "float32", layout: str = "CHW",
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                gpu_decode: Literal["roi", "full"] = "roi", max_height: int = 0, max_width: int = 0,
                color_mode: str = "rgb", exact_eval: bool = False, jitter: bool = False):
    """Define the graph inside an active ``Pipeline`` context.

    ``device`` is "cpu" or "gpu".

    - GPU: returns (images, labels, indices, jitter), images and labels on the GPU.
      Images are resized, flipped, ``dtype``, ``layout``, normalized by ``mean``/``std``
      (pixel units, 0..255; None = no normalization) in ``crop_mirror_normalize``; with
      ``jitter`` they stay float 0..255, CHW, unnormalized, for the colour jitter, which
      runs in torch on the same device (:mod:`loader.augment.jitter`: DALI's
      ``color_twist`` blends contrast towards a fixed grey and rotates hue in YIQ, where
      torchvision's ``ColorJitter`` uses the image's mean grey and HSV).
    - CPU: returns (crops, labels, indices, flips, geometry, jitter): the decoded windows
      (uint8 HWC, each its own size) and what the finisher needs to finish them.
      :class:`CpuFinisher` resizes, flips, jitters and normalizes them into the torch
      batch; ``dtype``/``layout``/``mean``/``std`` are unused here.

    ``color_mode`` "grayscale" decodes one channel (``types.GRAY``). ``exact_eval``
    resizes each window's box (the crop's source rectangle, ``geometry[:4]``; torchvision-exact
    eval, :mod:`loader.augment.torchvision_eval`) rather than the whole window: on the GPU, a
    resize with a region of interest (close to torchvision's, not bit-exact); on the CPU the
    finisher's exact path.
    ``gpu_decode`` ("roi" or "full", see :func:`resolve_gpu_decode`) and the largest
    image's ``max_height``/``max_width`` (for :func:`nvjpeg_arguments`) apply to the
    GPU graph only: the CPU graph is the same whatever they are.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    jpegs, anchor, shape, flip, labels, indices, geometry, jit = fn.external_source(
        source=source, num_outputs=8, batch=True, cycle="raise",
        dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32, types.INT64, types.INT64,
               types.FLOAT, types.FLOAT])
    output_type = types.GRAY if color_mode == "grayscale" else types.RGB
    if device == "cpu":
        images = fn.decoders.image_slice(
            jpegs, anchor, shape, device="cpu",
            output_type=output_type, normalized_anchor=False, normalized_shape=False, axis_names="WH")
        return images, labels, indices, flip, geometry, jit
    if gpu_decode not in ("roi", "full"):
        raise ValueError(f"gpu_decode must be 'roi' or 'full' here (resolve 'auto' first), got {gpu_decode!r}")
    nvjpeg = nvjpeg_arguments(max_height, max_width)
    if gpu_decode == "roi":
        images = fn.decoders.image_slice(
            jpegs, anchor, shape, device="mixed", output_type=output_type,
            normalized_anchor=False, normalized_shape=False, axis_names="WH", **nvjpeg)
    else:
        # Whole image on the hardware decoder, then the same window cut on the GPU.
        # "error": a window outside the image is a bad record, as on the CPU path. The window
        # stays a CPU input: Slice's schema takes anchor and shape on the CPU (InputDevice(1, 3, CPU)).
        images = fn.decoders.image(jpegs, device="mixed", output_type=output_type, **nvjpeg)
        images = fn.slice(images, anchor, shape, normalized_anchor=False, normalized_shape=False,
                          axis_names="WH", out_of_bounds_policy="error")
    roi = {}
    if exact_eval:
        # The box (x0, y0, x1, y1) within the window; DALI's ROI is in layout order (y, x).
        roi = dict(roi_start=fn.stack(geometry[1], geometry[0]), roi_end=fn.stack(geometry[3], geometry[2]),
                   roi_relative=False)
    images = fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_LINEAR,
                       antialias=True, **roi)
    channels = 1 if color_mode == "grayscale" else 3
    if jitter:
        images = fn.crop_mirror_normalize(images, mirror=flip, dtype=types.FLOAT, output_layout="CHW")
    else:
        images = fn.crop_mirror_normalize(
            images, mirror=flip, dtype=DALI_DTYPES[dtype], output_layout=layout,
            mean=list(mean) if mean is not None else [0.0] * channels,
            std=list(std) if std is not None else [1.0] * channels)
    return images, labels.gpu(), indices, jit


def build_pipeline(source, *, batch_size: int, num_threads: int, device_id: int | None,
                   prefetch: int, seed: int, **graph_options) -> Pipeline:
    """Build the pipeline of :func:`image_graph` for ``device_id`` (None = DALI's CPU backend)."""
    device = "cpu" if device_id is None else "gpu"
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                    prefetch_queue_depth=prefetch, seed=seed, exec_async=True, exec_pipelined=True)
    with pipe:
        pipe.set_outputs(*image_graph(source, device=device, **graph_options))
    pipe.build()
    return pipe
