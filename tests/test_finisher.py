"""CpuFinisher: the CPU graph's resize + flip + normalize, against Pillow (torchvision's PIL path)."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from loader.load.finisher import CpuFinisher

MEAN = torch.tensor([123.675, 116.28, 103.53])
STD = torch.tensor([58.395, 57.12, 57.375])


def crops_and_flips(seed=0, n=13, size=32):
    rng = np.random.default_rng(seed)
    shapes = [(size, size), (size, 3 * size), (5 * size, size), (size // 2, size // 3), (1, 1)]
    shapes += [tuple(int(v) for v in rng.integers(1, 6 * size, 2)) for _ in range(n - len(shapes))]
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    flips = [int(f) for f in rng.integers(0, 2, n)]
    return crops, flips


def pil_reference(crop, flip, size):
    im = Image.fromarray(crop).resize((size, size), Image.BILINEAR)
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())


@pytest.fixture()
def finisher():
    f = CpuFinisher(threads=2)
    yield f
    f.close()


@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_output_is_bit_identical_to_pillow(finisher, channels_last):
    crops, flips = crops_and_flips()
    size = 32
    out = torch.empty((len(crops), size, size, 3) if channels_last else (len(crops), 3, size, size),
                      dtype=torch.uint8)
    view = out.permute(0, 3, 1, 2) if channels_last else out
    finisher(crops, flips, view)
    for k, (crop, flip) in enumerate(zip(crops, flips)):
        assert torch.equal(view[k], pil_reference(crop, flip, size)), (k, crop.shape, flip)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
def test_float_output_is_normalized_pillow_pixels(finisher, dtype, atol):
    crops, flips = crops_and_flips(seed=1)
    out = torch.empty((len(crops), 3, 24, 24), dtype=dtype)
    finisher(crops, flips, out, MEAN.to(dtype).view(3, 1, 1), (1 / STD).to(dtype).view(3, 1, 1))
    for k, (crop, flip) in enumerate(zip(crops, flips)):
        want = (pil_reference(crop, flip, 24).float() - MEAN.view(3, 1, 1)) / STD.view(3, 1, 1)
        assert torch.allclose(out[k].float(), want, atol=atol), k


def test_every_slot_is_written_once_whatever_the_batch_size(finisher):
    for n in (1, 2, 3, 4, 5, 64):
        crops = [np.full((7 + k % 5, 9, 3), k, dtype=np.uint8) for k in range(n)]
        out = torch.full((n, 3, 8, 8), -1.0)
        finisher(crops, [0] * n, out)
        assert torch.equal(out.amin(dim=(1, 2, 3)), torch.arange(n, dtype=torch.float32))
        assert torch.equal(out.amax(dim=(1, 2, 3)), torch.arange(n, dtype=torch.float32))


def test_workers_run_torch_single_threaded_and_leave_the_caller_alone(finisher):
    before = torch.get_num_threads()
    in_worker = finisher._pool.submit(torch.get_num_threads).result()
    assert in_worker == 1
    assert torch.get_num_threads() == before
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [before]          # other (new) threads keep torch's setting


# -- without the private aten op ------------------------------------------------

class _RaisingOps:
    """An op namespace whose lookups fail the way torch's do for an op it lacks."""

    def __getattr__(self, name):
        raise RuntimeError(f"No such operator aten::{name}")


def test_resize_falls_back_to_interpolate_when_the_private_op_is_missing():
    import types

    from loader.load import finisher as pipeline

    assert pipeline._select_resize_into(types.SimpleNamespace()) is pipeline._interpolate_into  # AttributeError
    assert pipeline._select_resize_into(_RaisingOps()) is pipeline._interpolate_into             # RuntimeError
    # This torch has the op: the fast path is the one in use.
    assert pipeline._resize_into is not pipeline._interpolate_into


@pytest.mark.parametrize("channels_last", [False, True])
def test_fallback_resize_is_bit_identical_to_the_fast_path_and_to_pillow(monkeypatch, channels_last):
    from loader.load import finisher as pipeline

    size = 28
    crops, flips = crops_and_flips(seed=2, n=17, size=size)

    def finish():
        out = torch.empty((len(crops), size, size, 3) if channels_last else (len(crops), 3, size, size),
                          dtype=torch.uint8)
        view = out.permute(0, 3, 1, 2) if channels_last else out
        f = CpuFinisher(threads=2)      # fresh: no scratch buffer shared between the two runs
        try:
            f(crops, flips, view)
        finally:
            f.close()
        return view

    fast = finish()
    calls = []

    def fallback(x, s, out):
        calls.append(tuple(x.shape))
        pipeline._interpolate_into(x, s, out)
    monkeypatch.setattr(pipeline, "_resize_into", fallback)
    slow = finish()
    assert len(calls) == 16          # every crop but the one already 28x28 went through the fallback
    assert torch.equal(slow, fast)
    for k, (crop, flip) in enumerate(zip(crops, flips)):
        assert torch.equal(slow[k], pil_reference(crop, flip, size)), (k, crop.shape, flip)
