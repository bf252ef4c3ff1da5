"""``pack --overwrite`` over a live dataset in an object store (moto's S3 server on loopback,
tests/s3server.py): killed at any step, the prefix reads back as exactly the old dataset or exactly
the new one, a rerun leaves only the new one's objects, a reader reopening gets the new one, and a
manifest naming a bad index generation is one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import jpeg_bytes, run_cli, write

import loader
from loader.cli.data import dataset_info
from loader.errors import DatasetError
from loader.format.manifest import index_files, read_manifest

pytest_plugins = ["s3server"]     # the fixtures s3_server and s3_env (a plugin: imported by pytest only)

PREFIX = "team/p.packed"


def _client(endpoint: str):
    from s3server import s3_client

    return s3_client(endpoint)


def _objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    c = _client(endpoint)
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/").get("Contents", [])]
    return {k[len(PREFIX) + 1:]: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _restore(endpoint: str, bucket: str, objects: dict[str, bytes]) -> None:
    """Make the prefix hold exactly ``objects``."""
    c = _client(endpoint)
    for o in c.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/").get("Contents", []):
        c.delete_object(Bucket=bucket, Key=o["Key"])
    for k, body in objects.items():
        c.put_object(Bucket=bucket, Key=f"{PREFIX}/{k}", Body=body)


def _contents(where, cache_dir: Path | None = None) -> list[tuple[bytes, int, str]]:
    """Every record of the dataset at ``where``: (bytes, label, source path)."""
    ds = loader.open_dataset(where, cache_dir=cache_dir) if cache_dir else loader.open_dataset(where)
    try:
        return [(ds.read(i), int(ds.manifest.labels[i]), ds.manifest.source(i)) for i in range(len(ds))]
    finally:
        ds.close()


@pytest.fixture
def two_trees(image_tree, tmp_path) -> tuple[Path, Path]:
    """The old SRC (3 classes x 3) and a different new one (2 classes x 4, other images)."""
    new = tmp_path / "src2"
    for label, cls in enumerate(["kiwi", "lynx"]):
        for i in range(4):
            write(new / cls / f"n_{i}.jpg", jpeg_bytes(seed=100 + 10 * label + i, label=label))
    return image_tree, new


def _check_only_the_new_pack(endpoint: str, bucket: str, local: Path) -> None:
    """The prefix holds exactly the objects of the new pack, each the local pack's file byte for byte
    under its remote name; its manifest is the local one with those names (version 5)."""
    objects = _objects(endpoint, bucket)
    m = json.loads(objects["manifest.json"])
    g = m["index_generation"]
    ours = json.loads((local / "manifest.json").read_text())
    names = {s["name"]: r["name"] for s, r in zip(ours["shards"], m["shards"])}       # local -> remote
    names.update(zip(index_files().values(), index_files(g).values()))
    expected = {names.get(p.name, p.name): p.read_bytes() for p in local.iterdir() if p.name != "manifest.json"}
    assert {k: v for k, v in objects.items() if k != "manifest.json"} == expected
    ours.update(version=5, index_generation=g)
    for s, r in zip(ours["shards"], m["shards"]):
        s["name"] = r["name"]
    assert m == ours and list(m)[:3] == ["format", "version", "index_generation"]


def test_overwrite_killed_at_every_step_leaves_the_old_or_the_new_dataset_whole(two_trees, tmp_path, s3_env,
                                                                                s3_server, monkeypatch):
    old_src, new_src = two_trees
    url = f"s3://{s3_env}/{PREFIX}"
    old_local = loader.pack(old_src, tmp_path / "old.packed", shards=3, workers=1, progress=False).dst
    new_local = Path(loader.pack(new_src, tmp_path / "new.packed", shards=2, workers=1, progress=False).dst)
    old, new = _contents(old_local), _contents(new_local)
    assert len(old) == 9 and len(new) == 8 and not set(old) & set(new)

    loader.pack(old_src, url, shards=3, workers=1, progress=False)
    before = _objects(s3_server, s3_env)
    assert _contents(url, tmp_path / "c0") == old
    # One clean overwrite gives the names each step works on: every new object, then every old one it deletes.
    loader.pack(new_src, url, shards=2, workers=1, progress=False, overwrite=True)
    after = _objects(s3_server, s3_env)
    _check_only_the_new_pack(s3_server, s3_env, new_local)
    assert json.loads(after["manifest.json"])["index_generation"] == 1
    uploads = sorted(set(after) - {"manifest.json"}) + ["manifest.json"]
    deletes = sorted(set(before) - set(after))
    single = [c for c in index_files() if not c.startswith("label_")]      # not multi-label: no label CSR
    assert set(uploads) == {"shard-00003.lmdb", "shard-00004.lmdb", "skipped.tsv", "manifest.json",
                            *(index_files(1)[c] for c in single)}
    assert set(deletes) == {"shard-00000.lmdb", "shard-00001.lmdb", "shard-00002.lmdb",
                            *(index_files()[c] for c in single)}

    monkeypatch.setenv("TMPDIR", str(tmp_path))     # the killed packs' staging folders stay there
    for i, step in enumerate([f"upload:{k}" for k in uploads] + [f"delete:{k}" for k in deletes]):
        _restore(s3_server, s3_env, before)
        monkeypatch.setenv("LOADER_FAULT", step)
        r = run_cli("pack", str(new_src), url, "--shards", "2", "--workers", "1", "--quiet", "--overwrite")
        assert r.returncode == -9, (step, r.stderr)             # killed there: the step was reached
        monkeypatch.delenv("LOADER_FAULT")
        # Before the manifest's PUT: exactly the old dataset; from it on: exactly the new one.
        got = _contents(url, tmp_path / f"c{i + 1}")
        assert got == (old if step.startswith("upload:") else new), step
        assert dataset_info(url)["num_records"] == len(got), step
        loader.pack(new_src, url, shards=2, workers=1, progress=False, overwrite=True)    # the rerun
        _check_only_the_new_pack(s3_server, s3_env, new_local)
        assert _contents(url, tmp_path / f"c{i + 1}") == new, step


def test_a_reader_reopening_after_an_overwrite_gets_the_new_dataset(two_trees, tmp_path, s3_env, s3_server):
    old_src, new_src = two_trees
    url = f"s3://{s3_env}/{PREFIX}"
    cache = tmp_path / "cache"
    loader.pack(old_src, url, shards=3, workers=1, progress=False)
    ds = loader.open_dataset(url, cache_dir=cache)
    try:
        old = [(ds.read(i), int(ds.manifest.labels[i])) for i in range(len(ds))]
        old_entry = ds.path
    finally:
        ds.close()
    for generation, src in ((1, new_src), (2, old_src)):        # and back: a new generation each time
        loader.pack(src, url, shards=2, workers=1, progress=False, overwrite=True)
        ds = loader.open_dataset(url, cache_dir=cache)
        try:
            got = [(ds.read(i), int(ds.manifest.labels[i])) for i in range(len(ds))]
            assert ds.path != old_entry                  # a new entry: the manifest's bytes name it
            assert ds.manifest.version == 5 and sorted(p.name for p in ds.path.glob("labels*.npy")) == [
                f"labels.{generation}.npy"]
            old_entry = ds.path
        finally:
            ds.close()
        want = _contents(loader.pack(src, tmp_path / f"ref{generation}", shards=2, workers=1,
                                     progress=False).dst)
        assert got == [(b, label) for b, label, _ in want]
    assert got == old                                       # the old SRC again, through a third entry
    assert len([p for p in cache.rglob("manifest.json")]) == 3
    r = run_cli("verify", url, "--no-decode", "--quiet")
    assert r.returncode == 0 and f"verified 9 records in {url}: 0 bad (all good)" in r.stdout, r.stderr


@pytest.mark.parametrize("bad", ["../x", 0, -1, True, 1.0, 10**9, None])
def test_a_manifest_naming_a_bad_index_generation_is_one_line(image_tree, tmp_path, s3_env, s3_server, bad):
    url = f"s3://{s3_env}/{PREFIX}"
    loader.pack(image_tree, url, shards=1, workers=1, progress=False)
    loader.pack(image_tree, url, shards=1, workers=1, progress=False, overwrite=True)
    m = json.loads(_objects(s3_server, s3_env)["manifest.json"])
    if bad is None:
        del m["index_generation"]
    else:
        m["index_generation"] = bad
    _client(s3_server).put_object(Bucket=s3_env, Key=f"{PREFIX}/manifest.json", Body=json.dumps(m).encode())
    what = ("missing keys index_generation" if bad is None else f"bad 'index_generation' {bad!r}: it names the "
            "index files (labels.<g>.npy, ...) and must be a whole number from 1 to 999999999; re-pack")
    want = "^" + re.escape(f"{url}/manifest.json: {what}")
    for read in (lambda: loader.open_dataset(url, cache_dir=tmp_path / "cache"), lambda: dataset_info(url)):
        with pytest.raises(DatasetError, match=want) as e:
            read()
        assert "\n" not in str(e.value)
    local = tmp_path / "local.packed"              # the same manifest in a folder: the same line, its path
    loader.pack(image_tree, local, workers=1, progress=False)
    (local / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="^" + re.escape(f"{local}/manifest.json: {what}")):
        read_manifest(local)


def test_local_and_fresh_packs_keep_version_4_and_the_plain_names(image_tree, tmp_path, s3_env, s3_server):
    url = f"s3://{s3_env}/{PREFIX}"
    loader.pack(image_tree, url, shards=2, workers=1, progress=False)
    local = tmp_path / "l.packed"
    loader.pack(image_tree, local, shards=2, workers=1, progress=False)
    loader.pack(image_tree, local, shards=2, workers=1, progress=False, overwrite=True)   # local: as before
    objects = _objects(s3_server, s3_env)
    assert objects == {p.name: p.read_bytes() for p in local.iterdir()}
    assert json.loads(objects["manifest.json"])["version"] == 4 and "labels.npy" in objects


def test_a_multi_label_overwrite_names_its_label_columns_too(image_tree, tmp_path, s3_env, s3_server):
    import numpy as np

    rels = sorted(p.relative_to(image_tree).as_posix() for p in image_tree.rglob("*.jpg"))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"path": r, "label": ["x", "y", "z"][: i % 3 + 1]}) + "\n"
                              for i, r in enumerate(rels)))
    url = f"s3://{s3_env}/{PREFIX}"
    loader.pack(image_tree, url, shards=2, workers=1, progress=False)
    loader.pack(image_tree, url, shards=2, workers=1, progress=False, overwrite=True, labels=labels)
    local = tmp_path / "m.packed"
    loader.pack(image_tree, local, shards=2, workers=1, progress=False, labels=labels)
    _check_only_the_new_pack(s3_server, s3_env, local)
    assert {"label_offsets.1.npy", "label_values.1.npy"} <= set(_objects(s3_server, s3_env))
    ds, ref = loader.open_dataset(url, cache_dir=tmp_path / "cache"), read_manifest(local)
    try:
        assert ds.manifest.multi_label and ds.manifest.label_values.tolist() == ref.label_values.tolist()
        assert ds.manifest.label_offsets.tolist() == ref.label_offsets.tolist() == [0, 1, 3, 6, 7, 9, 12, 13, 15, 18]
        assert ds.multi_hot(np.arange(3)).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    finally:
        ds.close()
