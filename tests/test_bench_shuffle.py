"""``loader bench --shuffle block``: the loader rows read in ImageLoader's shuffle='block' order."""

from __future__ import annotations

import pytest

from loader.bench.contenders import ContenderSpec, make_contender
from loader.bench.harness import BenchSettings
from loader.errors import ArgumentError
from tests.conftest import pack_jpeg_classes


def test_bad_shuffle_refused_naming_it():
    with pytest.raises(ArgumentError) as e:
        BenchSettings(shuffle="random")
    assert e.value.param == "shuffle"


@pytest.mark.parametrize("shuffle", ["global", "block"])
def test_loader_row_reads_in_the_given_order(tmp_path, shuffle):
    packed = pack_jpeg_classes(tmp_path, classes=2, per_class=6, shards=3, seed_step=10, size=(40, 32))
    c = make_contender(ContenderSpec("loader", packed=packed, batch_size=4, image_size=32, shuffle=shuffle))
    c.create()
    try:
        assert c.obj.settings.shuffle_mode == shuffle
        plan = c.obj.epoch_plan(0).records.tolist()
        from loader import ImageLoader

        def loader_plan(mode):
            other = ImageLoader(packed, 4, image_size=32, seed=0, device="cpu", shuffle=mode)
            return other.epoch_plan(0).records.tolist()

        assert plan == loader_plan(shuffle)
        assert plan != loader_plan("global" if shuffle == "block" else "block")
    finally:
        c.close()


def test_block_shards_without_block_shuffle_refused_naming_it():
    with pytest.raises(ArgumentError) as e:
        BenchSettings(block_shards=2)
    assert e.value.param == "block_shards"
    with pytest.raises(ArgumentError) as e:
        BenchSettings(shuffle="block", block_shards=0)
    assert e.value.param == "block_shards"


def test_block_shards_sets_the_loader_rows_window(tmp_path):
    from loader import ImageLoader

    packed = pack_jpeg_classes(tmp_path, classes=2, per_class=6, shards=4, seed_step=10, size=(40, 32))
    c = make_contender(ContenderSpec("loader", packed=packed, batch_size=4, image_size=32, shuffle="block",
                                     block_shards=1))
    c.create()
    try:
        plan = c.obj.epoch_plan(0).records.tolist()
        one = ImageLoader(packed, 4, image_size=32, seed=0, device="cpu", shuffle="block", block_shards=1)
        wide = ImageLoader(packed, 4, image_size=32, seed=0, device="cpu", shuffle="block", block_shards=4)
        assert plan == one.epoch_plan(0).records.tolist()
        assert plan != wide.epoch_plan(0).records.tolist()
    finally:
        c.close()
