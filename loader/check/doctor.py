"""`loader doctor`: what this machine has, and whether the loader works on it.

The command to run first, and to paste into a bug report:

    loader doctor                     # environment only
    loader doctor photos.packed       # + a short self-check of the CPU path (and the GPU path if CUDA)

It reports the environment (Python, torch, CUDA, driver, GPU, DALI, nvImageCodec,
nvJPEG, the hardware JPEG decoder) and, given a packed dataset, checks each path
for real: the loader builds, its batches have the asked shapes and dtypes, the
labels and the record order are the manifest's, and (with CUDA) the GPU path
yields the CPU path's labels and records and images within the bound
:data:`GPU_CPU_MEAN_ABS_BOUND`. Each path runs in a child process: DALI can end
a process with a signal on bad data, and that must become a line of the report,
not a dead doctor. What is not checked (the GPU path on a machine without CUDA)
is said so, with the reason.

The result is a frozen :class:`DoctorReport` (``run_doctor()``); ``ok`` is True
only when every check that ran holds. The CLI prints it, one line per failure,
and exits 0 (all held) or 1; ``--json FILE`` writes ``DoctorReport.to_dict()``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from loader.errors import ArgumentError, LoaderError, one_line
from loader.units import DALI_WHEELS, NVIMGCODEC_WHEELS, NVJPEG_WHEELS, dist_version
from loader.validate import is_int, is_number

__all__ = ["Check", "DoctorReport", "Environment", "GPU_CPU_MEAN_ABS_BOUND", "GPU_CPU_P99_ABS_BOUND",
           "environment", "run_doctor"]

# GPU vs CPU images of the same records, windows and flips, in uint8 levels (0..255).
# A FIRST BOUND, NOT YET MEASURED on a GPU: only nvJPEG vs libjpeg-turbo and DALI's vs torch's
# antialiased bilinear resize differ. tests/test_cuda.py checks the same bound; tighten both
# once measured.
GPU_CPU_MEAN_ABS_BOUND = 4.0        # mean |gpu - cpu| over a batch
GPU_CPU_P99_ABS_BOUND = 32          # 99th percentile of |gpu - cpu| over a batch

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"

Status = Literal["ok", "failed", "not checked"]


@dataclass(frozen=True)
class Check:
    """One check: ``name`` (e.g. "cpu path"), ``status`` and a one-line ``detail``."""

    name: str
    status: Status
    detail: str

    def line(self) -> str:
        tag = {"ok": "ok", "failed": "FAILED", "not checked": "not checked"}[self.status]
        return f"{tag}: {self.name}: {self.detail}"


@dataclass(frozen=True)
class Environment:
    """What is installed and present. Strings, as printed; None = not installed / not found."""

    python: str
    platform: str
    loader: str
    torch: str | None
    torch_cuda: str | None          # the CUDA version torch was built for; None = a CPU build
    cuda_available: bool
    gpus: tuple[str, ...]           # torch's devices, or nvidia-smi's when torch sees none
    driver: str | None
    dali: str | None
    nvimgcodec: str | None
    nvjpeg: str | None
    hw_jpeg_decoder: str            # "available", "not available: ...", "not checked: ..."
    gpu_decode_auto: str | None     # what ImageLoader(gpu_decode="auto") resolves to here


@dataclass(frozen=True)
class DoctorReport:
    """The doctor's findings: the environment, then every check, in order."""

    environment: Environment
    checks: tuple[Check, ...]
    dataset: str | None

    @property
    def ok(self) -> bool:
        """True when no check failed (checks not run do not count)."""
        return all(c.status != "failed" for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "failed")

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``environment``, ``checks``, ``dataset``, ``ok``."""
        return {"environment": asdict(self.environment), "checks": [asdict(c) for c in self.checks],
                "dataset": self.dataset, "ok": self.ok}

    def lines(self) -> list[str]:
        """The report as printed by ``loader doctor``."""
        e = self.environment
        rows = [
            ("python", f"{e.python} ({e.platform})"),
            ("loader", e.loader),
            ("torch", f"{e.torch or 'not installed'}"
                      + (f" (built for CUDA {e.torch_cuda})" if e.torch_cuda else " (CPU build)" if e.torch else "")),
            ("CUDA", "available" if e.cuda_available else f"not available: {NO_CUDA}"),
            ("GPU", ", ".join(e.gpus) if e.gpus else "none found"),
            ("driver", e.driver or "not found"),
            ("DALI", e.dali or "not installed (pip install 'loader[dali]')"),
            ("nvImageCodec", (e.nvimgcodec or "not installed")
             + (f"; ImageLoader gpu_decode='auto' -> {e.gpu_decode_auto!r}" if e.gpu_decode_auto else "")),
            ("nvJPEG", e.nvjpeg or "not installed"),
            ("HW JPEG decoder", e.hw_jpeg_decoder),
        ]
        out = ["loader doctor"] + [f"  {k:<16}{v}" for k, v in rows]
        if self.dataset is not None:
            out.append(f"checks on {self.dataset}:")
        out += [f"  {c.line()}" for c in self.checks]
        not_checked = [c for c in self.checks if c.status == "not checked"]
        verdict = "ok: every check that ran holds" if self.ok else f"{len(self.failures)} check(s) FAILED"
        if not_checked:
            verdict += "; not checked: " + "; ".join(f"{c.name} ({c.detail})" for c in not_checked)
        out.append(verdict)
        return out


def _nvidia_smi() -> tuple[tuple[str, ...], str | None]:
    """(GPU names, driver version) from nvidia-smi, or ((), None) without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return (), None
    try:
        r = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return (), None
    rows = [[f.strip() for f in line.split(",")] for line in r.stdout.splitlines() if line.strip()]
    if r.returncode != 0 or not rows:
        return (), None
    return tuple(row[0] for row in rows), rows[0][-1]


# A 256x256 4:2:0 baseline JPEG decoded by nvImageCodec's hardware-only backend: it decodes
# only where a hardware JPEG engine exists (A100, H100, ...), else it returns nothing.
_HW_PROBE = textwrap.dedent("""
    import io, sys
    from PIL import Image
    from nvidia import nvimgcodec
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 30, 200)).save(buf, "JPEG", quality=90, subsampling=2)
    dec = nvimgcodec.Decoder(device_id=int(sys.argv[1]), backends=[nvimgcodec.Backend(nvimgcodec.HW_GPU_ONLY)])
    img = dec.decode(nvimgcodec.CodeStream(buf.getvalue()))
    print("available" if img is not None else "not available: the hardware-only backend decoded nothing")
""")


def _hw_jpeg_decoder(cuda: bool) -> str:
    if not cuda:
        return f"not checked: {NO_CUDA}"
    try:
        r = subprocess.run([sys.executable, "-c", _HW_PROBE, "0"], capture_output=True, text=True, timeout=120,
                           check=False)
    except subprocess.TimeoutExpired:
        return "not available: the probe did not finish in 120 s"
    last = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode == 0 and last:
        return last
    why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    return f"not available: nvImageCodec's hardware-only decoder failed ({why[:200]})"


def environment() -> Environment:
    """Probe the environment (imports torch; DALI only for its version)."""
    from loader.version import __version__

    try:
        import torch
        torch_version, torch_cuda = torch.__version__, torch.version.cuda
        cuda = bool(torch.cuda.is_available())
        gpus = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else ()
    except ImportError:
        torch_version, torch_cuda, cuda, gpus = None, None, False, ()
    smi_gpus, driver = _nvidia_smi()
    if not gpus and smi_gpus:
        gpus = tuple(f"{name} (seen by nvidia-smi, not by torch)" for name in smi_gpus)
    nvimgcodec = dist_version(*NVIMGCODEC_WHEELS)
    dali = dist_version(*DALI_WHEELS)
    gpu_decode = None
    if dali is not None:
        try:
            from loader.load.pipeline import resolve_gpu_decode

            gpu_decode = resolve_gpu_decode("auto", nvimgcodec)
        except Exception:  # noqa: BLE001 - a DALI that does not import: the path checks will say why
            gpu_decode = None
    return Environment(
        python=platform.python_version(), platform=platform.platform(terse=True), loader=__version__,
        torch=torch_version, torch_cuda=torch_cuda, cuda_available=cuda, gpus=gpus, driver=driver, dali=dali,
        nvimgcodec=nvimgcodec, nvjpeg=dist_version(*NVJPEG_WHEELS),
        hw_jpeg_decoder=_hw_jpeg_decoder(cuda), gpu_decode_auto=gpu_decode)


# -- the path checks, each in a child -------------------------------------------------


def _check_batches(ld, ds, device_type: str, dtype, size: int, max_batches: int
                   ) -> tuple[list[str], int, float, float]:
    """Run up to ``max_batches`` eval batches: (failures, images, images/s, first-batch seconds).

    images/s counts the batches after the first (the pipeline's start-up is the first
    batch's latency), or the first alone when there is only one."""
    import time

    import torch

    from loader.load.batches import host_targets

    plan = ld.epoch_plan(0).records.tolist()
    failures: list[str] = []
    seen: list[int] = []
    t0 = None
    n_timed = 0
    start = time.perf_counter()
    first = 0.0
    for k, (images, labels, idx) in enumerate(ld):
        if k == max_batches:
            break
        b = len(idx)
        if tuple(images.shape) != (b, 3, size, size) or images.dtype != dtype:
            failures.append(f"batch {k}: images {tuple(images.shape)} {images.dtype}, "
                            f"expected {(b, 3, size, size)} {dtype}")
        if images.device.type != device_type or labels.device.type != device_type:
            failures.append(f"batch {k}: on {images.device}, expected {device_type}")
        if not bool(torch.isfinite(images.float()).all()):
            failures.append(f"batch {k}: non-finite pixels")
        want = host_targets(ds, idx.cpu().numpy())
        if not torch.equal(labels.cpu(), want):
            failures.append(f"batch {k}: targets {labels.cpu().tolist()[:8]}... are not the manifest's "
                            f"{want.tolist()[:8]}...")
        seen += idx.cpu().tolist()
        if k == 0:
            if device_type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            first = t0 - start
        else:
            n_timed += b
    if device_type == "cuda":
        torch.cuda.synchronize()
    if n_timed:
        rate = n_timed / (time.perf_counter() - t0)
    else:
        rate = len(seen) / first if first > 0 else 0.0
    if seen != plan[:len(seen)]:
        failures.append("the records came out of order (eval must follow the manifest's order)")
    if not seen:
        failures.append("no batch came out")
    return failures, len(seen), rate, first


def _agreement(dst: str, batch_size: int, size: int) -> list[str]:
    """CPU vs GPU on the same records: labels and indices equal, images within the bound."""
    import torch

    from loader.load.imageloader import ImageLoader

    kw = dict(batch_size=batch_size, image_size=size, train=True, seed=0, with_indices=True,
              dtype=torch.uint8, mean=None, std=None)
    failures = []
    cpu, gpu = ImageLoader(dst, device="cpu", **kw), ImageLoader(dst, device="cuda", **kw)
    for k, ((ci, cl, cx), (gi, gl, gx)) in enumerate(zip(cpu, gpu)):
        if k == 2:
            break
        if cx.tolist() != gx.cpu().tolist() or cl.tolist() != gl.cpu().tolist():
            failures.append(f"batch {k}: the GPU path yields other records or labels than the CPU path")
            continue
        diff = (gi.cpu().to(torch.int16) - ci.to(torch.int16)).abs().float()
        mean, p99 = diff.mean().item(), torch.quantile(diff.flatten(), 0.99).item()
        if mean > GPU_CPU_MEAN_ABS_BOUND or p99 > GPU_CPU_P99_ABS_BOUND:
            failures.append(f"batch {k}: GPU vs CPU pixels differ by mean {mean:.2f} / p99 {p99:.0f} levels "
                            f"(bound {GPU_CPU_MEAN_ABS_BOUND} / {GPU_CPU_P99_ABS_BOUND})")
    cpu.close()
    gpu.close()
    return failures


def _child(dst: str, device: str, batch_size: int, size: int, max_batches: int) -> dict:
    import torch

    from loader.format.dataset import open_dataset
    from loader.load.batches import host_targets
    from loader.load.imageloader import ImageLoader

    ds = open_dataset(dst)
    bs = max(1, min(batch_size, len(ds)))
    ld = ImageLoader(dst, batch_size=bs, image_size=size, train=False, device=device, with_indices=True)
    failures, images, rate, first = _check_batches(ld, ds, "cuda" if device == "cuda" else "cpu", torch.float32, size,
                                            max_batches)
    ld.close()
    train = ImageLoader(dst, batch_size=bs, image_size=size, train=True, drop_last=False, device=device,
                        with_indices=True)
    x, y, idx = next(iter(train))
    want = host_targets(ds, idx.cpu().numpy())
    if tuple(x.shape) != (len(idx), 3, size, size) or not torch.equal(y.cpu(), want):
        failures.append(f"train batch: images {tuple(x.shape)} or labels do not match the manifest")
    train.close()
    if device == "cuda":
        failures += _agreement(dst, bs, min(size, 64))
    return {"failures": failures, "images": images, "rate": rate, "first_batch_s": first, "batch_size": bs}


def _child_main() -> None:
    dst, device, batch_size, size, max_batches = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    try:
        out = _child(dst, device, batch_size, size, max_batches)
    except Exception as e:  # noqa: BLE001 - reported as the check's one line
        out = {"failures": [f"{type(e).__name__}: {one_line(e)}"], "images": 0, "rate": 0.0, "first_batch_s": 0.0,
               "batch_size": batch_size}
    print("DOCTOR " + json.dumps(out), flush=True)


def _path_check(dst: str, device: str, batch_size: int, size: int, max_batches: int, timeout: float) -> Check:
    name = f"{'gpu' if device == 'cuda' else 'cpu'} path"
    code = "from loader.check.doctor import _child_main; _child_main()"
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        r = subprocess.run([sys.executable, "-c", code, dst, device, str(batch_size), str(size), str(max_batches)],
                           capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return Check(name, "failed", f"did not finish in {timeout:.0f} s")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("DOCTOR ")]
    if r.returncode != 0 or not lines:
        if r.returncode < 0:
            try:
                how = f"killed by {signal.Signals(-r.returncode).name}"
            except ValueError:
                how = f"killed by signal {-r.returncode}"
        else:
            how = f"exit status {r.returncode}"
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return Check(name, "failed", f"the loader's process died ({how}): {tail}; run `loader verify {dst}`")
    out = json.loads(lines[-1][len("DOCTOR "):])
    if out["failures"]:
        return Check(name, "failed", "; ".join(out["failures"][:3]))
    what = f"{out['images']} images in batches of {out['batch_size']} at {size} px match the manifest " \
           f"(shapes, dtypes, labels, order)"
    if device == "cuda":
        what += f", and the CPU path's records, labels and pixels (within {GPU_CPU_MEAN_ABS_BOUND} levels)"
    return Check(name, "ok", f"{what}; {out['rate']:.0f} images/s, first batch {1000 * out['first_batch_s']:.0f} ms "
                             f"(a short run, not a benchmark)")


def run_doctor(dst: str | os.PathLike | None = None, *, batch_size: int = 32, image_size: int = 224,
               max_batches: int = 8, timeout: float = 600.0) -> DoctorReport:
    """Probe the environment and, given a packed dataset ``dst``, self-check the CPU and GPU paths.

    Each path loads up to ``max_batches`` eval batches of ``batch_size`` at ``image_size`` px
    in a child process (killed after ``timeout`` seconds) and one train batch; with CUDA the
    GPU path is also compared with the CPU path.

    >>> report = run_doctor("photos.packed")                      # doctest: +SKIP
    >>> report.ok, [c.line() for c in report.failures]             # doctest: +SKIP
    (True, [])
    """
    for name, v, low in (("batch_size", batch_size, 1), ("image_size", image_size, 8), ("max_batches", max_batches, 1)):
        if not is_int(v) or v < low:
            raise ArgumentError(f"{name} must be an int >= {low}, got {v!r}", param=name)
    if not (is_number(timeout) and timeout > 0):
        raise ArgumentError(f"timeout must be > 0 seconds, got {timeout!r}", param="timeout")
    env = environment()
    checks: list[Check] = []
    if env.dali is None:
        checks.append(Check("DALI", "failed", "nvidia-dali is not installed: pip install 'loader[dali]'"))
    if env.torch is None:
        checks.append(Check("torch", "failed", "torch is not installed"))
    if dst is not None:
        dst = str(dst)
        try:
            from loader.format.dataset import open_dataset

            n = len(open_dataset(dst))
            checks.append(Check("dataset", "ok", f"{n} records, manifest and shards open"))
        except (LoaderError, OSError) as e:
            checks.append(Check("dataset", "failed", one_line(e)))
        else:
            if env.dali is not None and env.torch is not None:
                checks.append(_path_check(dst, "cpu", batch_size, image_size, max_batches, timeout))
                if env.cuda_available:
                    checks.append(_path_check(dst, "cuda", batch_size, image_size, max_batches, timeout))
    elif env.dali is not None:
        checks.append(Check("cpu path", "not checked", "no packed dataset given (loader doctor DST)"))
        if env.cuda_available:
            checks.append(Check("gpu path", "not checked", "no packed dataset given (loader doctor DST)"))
    if not env.cuda_available:
        hint = ""
        if env.gpus and env.torch_cuda is None:
            hint = f"; a GPU is present but torch {env.torch} is a CPU build: install a CUDA build of torch"
        checks.append(Check("gpu path", "not checked", NO_CUDA + hint))
    return DoctorReport(environment=env, checks=tuple(checks), dataset=dst)
