"""open_dataset / ImageLoader on a URL: the same records and batches as the local path, through the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import epoch_batches, jpeg_bytes, write

import loader
from loader import ImageLoader
from loader.errors import ArgumentError, DatasetError
from loader.format.dataset import open_dataset

pytest_plugins = ["s3server"]     # s3_server, s3_env: a moto S3 on loopback (skips without moto / obstore)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """24 small photo-like JPEGs in 3 classes, 6 shards."""
    root = tmp_path_factory.mktemp("remote_open")
    for label in range(3):
        for i in range(8):
            write(root / "src" / f"c{label}" / f"{i}.jpg", jpeg_bytes(seed=10 * label + i, size=(48 + i, 40),
                                                                      label=label))
    loader.pack(root / "src", root / "packed", shards=6, workers=1, progress=False)
    return root / "packed"




@pytest.mark.parametrize("limit", [None, "3shards"])
def test_imageloader_on_a_file_url_yields_the_batches_of_the_local_path(packed, tmp_path, limit):
    kw = dict(batch_size=4, image_size=32, device="cpu", seed=5, num_threads=1)
    if limit is not None:       # room for the index and 3 of the 6 shards: shards are evicted and fetched again
        limit = (sum(f.stat().st_size for f in packed.iterdir() if not f.name.startswith("shard-"))
                 + 3 * max(f.stat().st_size for f in packed.glob("shard-*.lmdb")))
    local = epoch_batches(ImageLoader(packed, **kw))
    remote_ld = ImageLoader(packed.as_uri(), cache_dir=tmp_path / "cache", cache_limit=limit, **kw)
    assert remote_ld.dataset.url == packed.as_uri() and remote_ld.dataset.path.parent == tmp_path / "cache"
    remote = epoch_batches(remote_ld)
    assert len(local) == len(remote) == 12
    for (xa, ya), (xb, yb) in zip(local, remote):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_imageloader_refuses_a_cache_limit_below_two_shards_at_construction(packed, tmp_path):
    with pytest.raises(ArgumentError) as info:
        ImageLoader(packed.as_uri(), batch_size=4, device="cpu", cache_dir=tmp_path / "cache", cache_limit="10kB")
    assert info.value.param == "cache_limit" and "at least" in str(info.value) and "\n" not in str(info.value)


def test_a_url_without_a_dataset_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        open_dataset((tmp_path / "empty").as_uri(), cache_dir=tmp_path / "cache")
    assert str(info.value) == (f"not a packed dataset: {(tmp_path / 'empty').as_uri()} has no manifest.json; "
                               f"create one with `loader pack SRC {(tmp_path / 'empty').as_uri()}`")


def test_a_pickled_remote_dataset_reopens_from_the_cache(packed, tmp_path):
    import pickle

    ds = open_dataset(packed.as_uri(), cache_dir=tmp_path / "cache", cache_limit="1GB")
    again = pickle.loads(pickle.dumps(ds))
    assert again.url == ds.url and again.path == ds.path and again.source.cache.limit == 10**9
    assert [a.tobytes() for a in again.read_batch(range(len(again)))] == \
        [a.tobytes() for a in open_dataset(packed).read_batch(range(len(again)))]


def test_s3_dataset_opens_through_the_cache_and_checks_each_shard_digest(image_tree, tmp_path, s3_env, s3_server):
    from s3server import s3_client

    url = f"s3://{s3_env}/p.packed"
    loader.pack(image_tree, url, shards=3, workers=1, progress=False)
    loader.pack(image_tree, tmp_path / "local", shards=3, workers=1, progress=False)
    ds = open_dataset(url, cache_dir=tmp_path / "cache")
    assert ds.url == url and ds.source.digests[0].startswith("sha256:")
    want = [a.tobytes() for a in open_dataset(tmp_path / "local").read_batch(range(len(ds)))]
    assert [a.tobytes() for a in ds.read_batch(range(len(ds)))] == want
    # A shard changed in the bucket after packing: downloaded twice, then one line naming it and the URL.
    c = s3_client(s3_server)
    body = c.get_object(Bucket=s3_env, Key="p.packed/shard-00001.lmdb")["Body"].read()
    c.put_object(Bucket=s3_env, Key="p.packed/shard-00001.lmdb", Body=body[:-1] + bytes([body[-1] ^ 1]))
    fresh = open_dataset(url, cache_dir=tmp_path / "cache2")
    with pytest.raises(DatasetError) as info:
        fresh.read_batch([fresh.manifest.shards[1].first])
    msg = str(info.value)
    assert msg.startswith(f"{url}/shard-00001.lmdb has digest ") and "downloaded twice" in msg and "\n" not in msg


def test_two_epochs_from_s3_are_the_local_pack_s_records_labels_and_batches(tmp_path, s3_env):
    """The issue's first acceptance point: a pack in s3:// (moto) yields, over two epochs with the
    global shuffle, byte for byte the batches (images, labels, record indices) the same pack yields
    read locally; with a cache that holds the whole dataset and one that holds half of it."""
    from tests.conftest import pack_small_images

    src_root = tmp_path / "data"
    local = pack_small_images(src_root, classes=3, per_class=8, base=(40, 30))
    url = f"s3://{s3_env}/small.packed"
    loader.pack(src_root / "src", url, shards=4, workers=1, progress=False)
    kw = dict(batch_size=4, image_size=32, device="cpu", seed=9, num_threads=1, with_indices=True)

    def two_epochs(ld):
        return [[t.clone() for t in out] for _ in range(2) for out in ld]

    want = two_epochs(ImageLoader(local, **kw))
    index = sum(f.stat().st_size for f in local.iterdir() if not f.name.startswith("shard-"))
    half = index + 2 * max(f.stat().st_size for f in local.glob("shard-*.lmdb"))   # 2 of the 4 shards
    for limit in (None, half):
        got = two_epochs(ImageLoader(url, cache_dir=tmp_path / f"cache-{limit}", cache_limit=limit, **kw))
        assert len(got) == len(want) == 12
        for a, b in zip(want, got):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(int(i) for out in want[:6] for i in out[2]) == list(range(24))   # epoch 1: every record once


@pytest.mark.parametrize("good", [True, False])
def test_a_loader_0_4_0_pack_with_blake2b_digests_is_still_checked(packed, tmp_path, good):
    """Packs of loader 0.4.0 record ``blake2b-128`` shard digests (now ``sha256``, 2.5x faster to check):
    a right one is accepted, a wrong one is the digest error naming the shard."""
    import hashlib
    import json
    import shutil

    old = tmp_path / "old.packed"
    shutil.copytree(packed, old)
    m = json.loads((old / "manifest.json").read_text())
    for s in m["shards"]:
        h = hashlib.blake2b((old / s["name"]).read_bytes(), digest_size=16).hexdigest()
        s["digest"] = f"blake2b-128:{h if good else h[::-1]}"
    (old / "manifest.json").write_text(json.dumps(m))
    ds = open_dataset(old.as_uri(), cache_dir=tmp_path / "cache")
    assert ds.source.digests[0].startswith("blake2b-128:")
    if good:
        assert [a.tobytes() for a in ds.read_batch(range(len(ds)))] == \
            [a.tobytes() for a in open_dataset(packed).read_batch(range(len(ds)))]
    else:
        with pytest.raises(DatasetError) as info:
            ds.read_batch([0])
        assert f"{old.as_uri()}/shard-00000.lmdb has digest " in str(info.value) and "\n" not in str(info.value)
