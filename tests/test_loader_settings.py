"""ImageLoader's arguments: every one is validated at construction (LoaderSettings), naming itself;
``augment=`` replaces the seven flat recipe keywords (deprecated, same batches); ``seed=None``
draws a seed that state_dict() carries, so a resume is exact."""

import dataclasses
import inspect
import math
import warnings

import numpy as np
import pytest
import torch

from loader import ImageLoader
from loader.augment.recipe import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD, pixel_units
from loader.augment.settings import Augment
from loader.errors import ArgumentError, DatasetError
from loader.load.settings import AUGMENT_KEYWORDS, MAX_BATCH_SIZE, MAX_SIDE, LoaderSettings
from tests.conftest import pack_small_images

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """8 small JPEGs in 2 classes."""
    return pack_small_images(tmp_path_factory.mktemp("settings"), classes=2, per_class=4, base=(40, 30))


# Bad values per parameter: each entry is the keyword arguments of one bad call (on top of
# batch_size=4), all of which must fail with ArgumentError(param=<the key>) at ImageLoader(...).
BAD = {
    "batch_size": [dict(batch_size=0), dict(batch_size=-1), dict(batch_size=2.0), dict(batch_size=True),
                   dict(batch_size="4"), dict(batch_size=2**31), dict(batch_size=MAX_BATCH_SIZE + 1),
                   dict(batch_size=9)],                                 # over the 8 records, with drop_last
    "image_size": [dict(image_size=7), dict(image_size=MAX_SIDE + 1), dict(image_size=224.0), dict(image_size=None)],
    "train": [dict(train="yes"), dict(train=1), dict(train=None)],
    "shuffle": [dict(shuffle="no"), dict(shuffle=0), dict(shuffle="blocks"), dict(shuffle="Global")],
    "block_shards": [dict(shuffle="block", block_shards=0), dict(shuffle="block", block_shards="2"),
                     dict(shuffle="block", block_shards=2.0), dict(shuffle="block", block_shards=True),
                     dict(block_shards=2)],                             # without shuffle="block"
    "drop_last": [dict(drop_last="no"), dict(drop_last=1)],
    "seed": [dict(seed="x"), dict(seed=-1), dict(seed=2**100), dict(seed=2**63), dict(seed=1.5), dict(seed=True),
             dict(seed=None, validation_split=0.5, subset="training")],
    "device": [dict(device="cuda:abc"), dict(device="tpu"), dict(device=3), dict(device=None)],
    "num_threads": [dict(num_threads=0), dict(num_threads=10**6), dict(num_threads="4")],
    "prefetch": [dict(prefetch=0), dict(prefetch=10**6), dict(prefetch=1.5)],
    "dtype": [dict(dtype=torch.float64), dict(dtype="float32"), dict(dtype=np.float32)],
    "channels_last": [dict(channels_last="yes")],
    "mean": [dict(mean="abc"), dict(mean=(NAN, NAN, NAN)), dict(mean=(INF, 0.4, 0.4)),
             dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),       # 0..255 units
             dict(mean=(0.5, 0.5)), dict(mean=None), dict(mean=3), dict(mean=(True, 0.4, 0.4)),
             dict(dtype=torch.uint8)],                                              # uint8 with the default mean
    "std": [dict(std=(0.0, 0.2, 0.2)), dict(std=(NAN, NAN, NAN)), dict(std="abc"), dict(std=None),
            dict(std=(0.2, -INF, 0.2))],
    "validation_split": [dict(validation_split="0.2", subset="training"), dict(validation_split=0.0, subset="training"),
                         dict(validation_split=1.0, subset="training"), dict(validation_split=NAN, subset="training"),
                         dict(validation_split=True, subset="training"),
                         dict(validation_split=0.01, subset="validation")],          # empty: 8 records
    "subset": [dict(validation_split=0.5, subset="test"), dict(subset="training"), dict(validation_split=0.5),
               dict(validation_split=0.5, subset=3)],
    "rank": [dict(rank=-1), dict(rank="0"), dict(rank=2, world_size=2), dict(rank=1.0)],
    "world_size": [dict(world_size=0), dict(world_size="2"), dict(world_size=-1)],
    "with_indices": [dict(with_indices="yes")],
    "on_error": [dict(on_error="skip"), dict(on_error=None)],
    "gpu_decode": [dict(gpu_decode="fast"), dict(gpu_decode=None)],
    "augment": [dict(augment="strong"), dict(augment={"hflip": 0.5}), dict(augment=Augment(), hflip=0.0)],
    "batch_transform": [dict(batch_transform="mixup"), dict(batch_transform=3)],
    "pad": [dict(pad="no"), dict(pad=None), dict(pad=0), dict(pad=False, drop_last=True)],
    "cache_dir": [dict(cache_dir=3), dict(cache_dir=b"/tmp/x")],
    "service": [dict(service="ray"), dict(service=2), dict(service={"num_workers": 2})],
    "cache_limit": [dict(cache_limit=0), dict(cache_limit=-1), dict(cache_limit="lots"), dict(cache_limit="5 parsecs"),
                    dict(cache_limit=True), dict(cache_limit=1.5)],
    # The deprecated flat keywords (ImageLoader's **deprecated_augment), validated by Augment.
    "scale": [dict(scale=(0.5, 1.5)), dict(scale="ab"), dict(scale=(NAN, 1.0))],
    "ratio": [dict(ratio=(2.0, 1.0)), dict(ratio=None)],
    "hflip": [dict(hflip=1.5), dict(hflip=NAN), dict(hflip="0.5")],
    "color_jitter": [dict(color_jitter=-1.0), dict(color_jitter="strong"), dict(color_jitter=(0.2, 0.3, 0.4, 0.9))],
    "crop_fraction": [dict(crop_fraction=0.0), dict(crop_fraction=1.2), dict(crop_fraction="x"),
                      dict(augment=Augment(crop_fraction=1e-6, eval_mode="torchvision"), train=False)],
    "eval_mode": [dict(eval_mode="exact")],
    "color_mode": [dict(color_mode="gray")],
}


def parameters() -> list[str]:
    """ImageLoader's named parameters, from its signature (a new one without a BAD entry fails)."""
    sig = inspect.signature(ImageLoader)
    return [p.name for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]


def cases():
    """(parameter, kwargs) for every named parameter but ``path`` and every deprecated flat keyword."""
    names = [n for n in parameters() if n != "path"] + list(AUGMENT_KEYWORDS)
    return [pytest.param(name, kw, id=f"{name}-{i}") for name in names for i, kw in enumerate(BAD.get(name, [None]))]


def test_every_parameter_has_bad_values():
    """The list above covers the signature: a parameter added without a bad-value case fails here."""
    sig = inspect.signature(ImageLoader)
    assert [p.name for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD] == ["deprecated_augment"]
    assert set(AUGMENT_KEYWORDS) == {f.name for f in dataclasses.fields(Augment)}
    assert set(BAD) == (set(parameters()) - {"path"}) | set(AUGMENT_KEYWORDS)


@pytest.mark.parametrize("name,kwargs", cases())
def test_bad_argument_is_refused_at_construction_naming_it(ds, name, kwargs, monkeypatch):
    assert kwargs is not None, f"ImageLoader's parameter {name!r} has no bad-value case in BAD"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    kw = dict(batch_size=4, device="cpu")
    kw.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ArgumentError) as info:
            ImageLoader(ds, **kw)
    e = info.value
    assert e.param == name, (e.param, str(e))
    assert name in str(e) and "\n" not in str(e)
    assert isinstance(e, ValueError) and isinstance(e, TypeError)     # what callers of the built-ins catch


def test_path_is_refused_naming_it(ds, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=str(missing)):
        ImageLoader(missing, batch_size=4)
    with pytest.raises(DatasetError, match=str(tmp_path)):
        ImageLoader(tmp_path, batch_size=4)                  # a directory, not a packed dataset
    for bad in (123, None, b"bytes"):
        with pytest.raises(ArgumentError) as info:
            ImageLoader(bad, batch_size=4)
        assert info.value.param == "path" and str(info.value).startswith("path must be")


def test_an_unknown_keyword_is_a_type_error_naming_it(ds):
    with pytest.raises(TypeError, match="unexpected keyword argument 'hflipp'") as info:
        ImageLoader(ds, batch_size=4, hflipp=0.5)
    assert info.value.param == "hflipp"


def test_messages_say_what_to_do(ds):
    """The exact wording users see for the sizes issue 21 names."""
    with pytest.raises(ArgumentError, match=r"^batch_size must be an int in \[1, 1048576\] \(DALI reserves "
                                            r"memory for every slot of a batch when it builds the pipeline\), "
                                            r"got 2147483648$"):
        ImageLoader(ds, batch_size=2**31)
    with pytest.raises(ArgumentError, match=r"^crop_fraction=1e-06 with image_size=224 resizes eval images to "
                                            r"\d+ px a side .* over 16384: pass crop_fraction >= 0.01367"):
        ImageLoader(ds, batch_size=4, train=False, augment=Augment(eval_mode="torchvision", crop_fraction=1e-6))
    with pytest.raises(ArgumentError, match=r"^seed must be None \(a random seed\) or an int in \[0, 2\*\*63\), "
                                            r"got 1267650600228229401496703205376$"):
        ImageLoader(ds, batch_size=4, seed=2**100)
    with pytest.raises(ArgumentError, match=r"^mean must be 3 numbers in 0..1 units \(torchvision's, not 0..255\) "
                                            r"for color_mode='rgb', got \(nan, nan, nan\)$"):
        ImageLoader(ds, batch_size=4, mean=(NAN,) * 3)


def test_bounds_are_inclusive(ds):
    """The largest accepted values build (nothing is allocated before the first epoch)."""
    ld = ImageLoader(ds, batch_size=MAX_BATCH_SIZE, train=False, seed=2**63 - 1, device="cpu",
                     augment=Augment(crop_fraction=224 / MAX_SIDE, eval_mode="torchvision"))
    assert (ld.batch_size, ld.seed, len(ld)) == (MAX_BATCH_SIZE, 2**63 - 1, 1)
    assert ImageLoader(ds, batch_size=4, image_size=MAX_SIDE, device="cpu").image_size == MAX_SIDE   # train: no resize
    big = ImageLoader(ds, batch_size=4, image_size=MAX_SIDE, train=False, device="cpu",
                      augment=Augment(crop_fraction=1.0))
    assert big.image_size == MAX_SIDE


@pytest.mark.parametrize("var,value,param", [("RANK", "abc", "rank"), ("RANK", "-1", "rank"),
                                             ("WORLD_SIZE", "two", "world_size"), ("WORLD_SIZE", "0", "world_size"),
                                             ("LOCAL_RANK", "x", None), ("LOCAL_WORLD_SIZE", "0", "num_threads")])
def test_launcher_environment_garbage_is_one_line_naming_the_variable(ds, monkeypatch, var, value, param):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, value)
    with pytest.raises(ArgumentError, match=f"^environment variable {var}='{value}' must be an int") as info:
        ImageLoader(ds, batch_size=4, device="cpu")
    assert info.value.param == param and "\n" not in str(info.value)
    if param in ("rank", "world_size"):
        assert f"or pass {param}=" in str(info.value)
        ImageLoader(ds, batch_size=4, device="cpu", rank=0, world_size=1)      # the argument overrides it


def test_settings_are_one_frozen_object(ds):
    ld = ImageLoader(ds, batch_size=4, device="cpu", augment=Augment(color_mode="grayscale"))
    s = ld.settings
    assert isinstance(s, LoaderSettings) and (ld.mean, ld.std) == (s.mean, s.std) == (GRAY_MEAN, GRAY_STD)
    assert s.pixel_mean == tuple(255.0 * m for m in GRAY_MEAN) == pixel_units(GRAY_MEAN)
    assert (s.shuffle, s.drop_last, s.pad, s.gpu_decode in ("roi", "full")) == (True, True, True, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 8
    with pytest.raises(AttributeError):
        ld.batch_size = 8
    rgb = ImageLoader(ds, batch_size=4, device="cpu", train=False, pad=False)
    assert rgb.settings.pixel_std == pixel_units(IMAGENET_STD) and rgb.mean == IMAGENET_MEAN and rgb.pad is False
    assert (rgb.shuffle, rgb.drop_last) == (False, False)


# ------------------------------------------------------------------ augment=, and the flat keywords


def epoch(ld) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in b) for b in ld]


@pytest.mark.parametrize("flat", [dict(scale=(0.3, 0.9), ratio=(0.5, 2.0), hflip=1.0, color_jitter=0.3),
                                  dict(train=False, crop_fraction=0.6, eval_mode="torchvision"),
                                  dict(color_mode="grayscale", color_jitter=(0.4, 0.2, 0))])
def test_flat_keywords_warn_and_give_the_same_batches_as_augment(ds, flat):
    kw = dict(batch_size=4, image_size=24, seed=3, device="cpu", dtype=torch.uint8, mean=None, std=None,
              with_indices=True, drop_last=False)
    flat = dict(flat)
    if "train" in flat:
        kw["train"] = flat.pop("train")
    with pytest.warns(DeprecationWarning) as record:
        old = ImageLoader(ds, **kw, **flat)
    (w,) = [r for r in record if r.category is DeprecationWarning]
    names = ", ".join(f"{k}=..." for k in flat)
    assert str(w.message).startswith(f"ImageLoader({names}) is deprecated: pass augment=loader.Augment({names})")
    assert w.filename == __file__                          # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = ImageLoader(ds, **kw, augment=Augment(**flat))
    assert old.augment == new.augment == Augment(**flat)
    a, b = epoch(old), epoch(new)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        for s, t in zip(x, y):
            assert s.dtype == t.dtype and s.numpy().tobytes() == t.numpy().tobytes()


def test_augment_and_a_flat_keyword_together_is_refused(ds):
    with pytest.raises(ArgumentError, match=r"^augment= and hflip=\.\.\. were both given") as info:
        ImageLoader(ds, batch_size=4, augment=Augment(hflip=0.0), hflip=0.0)
    assert info.value.param == "augment"


# ------------------------------------------------------------------ seed=None


def test_seed_none_draws_a_seed_per_loader(ds):
    a, b = (ImageLoader(ds, batch_size=2, image_size=16, seed=None, device="cpu") for _ in range(2))
    assert a.seed != b.seed and all(0 <= s < 2**63 and isinstance(s, int) for s in (a.seed, b.seed))
    assert a.state_dict()["seed"] == a.seed and a.settings.seed_drawn and not ImageLoader(ds, 2).settings.seed_drawn
    with pytest.raises(ArgumentError, match="seed=None draws a seed per process") as info:
        ImageLoader(ds, batch_size=2, seed=None, rank=0, world_size=2)
    assert info.value.param == "seed"


def test_seed_none_resume_is_exact(ds):
    kw = dict(batch_size=2, image_size=16, seed=None, device="cpu", with_indices=True)
    run = ImageLoader(ds, **kw)
    run.set_epoch(1)
    it = iter(run)
    next(it), next(it)
    state = run.state_dict()
    rest = [tuple(t.clone() for t in b) for b in it]
    assert len(rest) == 2
    resumed = ImageLoader(ds, **kw)                        # draws its own seed, then takes the state's
    assert resumed.seed != run.seed
    resumed.load_state_dict(state)
    assert resumed.seed == run.seed == state["seed"]
    again = epoch(resumed)
    assert len(again) == 2
    for x, y in zip(again, rest):
        assert all(torch.equal(s, t) for s, t in zip(x, y))
    # The same seed passed explicitly gives the same epoch from its start.
    pinned = ImageLoader(ds, **dict(kw, seed=run.seed))
    pinned.set_epoch(1)
    assert all(torch.equal(s, t) for x, y in zip(epoch(pinned)[2:], rest) for s, t in zip(x, y))


def test_seed_none_is_refused_when_a_second_rank_appears_before_the_first_epoch(ds, monkeypatch):
    """Trainers start the other ranks after building the loader: the first epoch checks again."""
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(v, raising=False)
    ld = ImageLoader(ds, batch_size=2, image_size=16, seed=None, device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ArgumentError, match="seed=None draws a seed per process, but the 2 ranks") as info:
        next(iter(ld))
    assert info.value.param == "seed" and ld._pipe is None
