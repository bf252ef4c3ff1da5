"""Packing to an object store (``s3://``) and reading it back, against moto's S3 server on loopback
(tests/s3server.py): the bytes uploaded, the commit order, the refusals and the one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

import loader
from loader.cli.data import dataset_info
from loader.errors import DatasetError, PackError
from loader.format.files import file_digest
from loader.format.manifest import index_files, read_manifest

pytest_plugins = ["s3server"]     # the fixtures s3_server and s3_env (a plugin: imported by pytest only)


def s3_client(endpoint: str):
    """A boto3 client of the test server."""
    from s3server import s3_client

    return s3_client(endpoint)


def _objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    c = s3_client(endpoint)
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    return {k[len(prefix) + 1:]: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _fetched(url: str, dest: Path) -> Path:
    """The whole dataset at ``url``, fetched into ``dest`` (each shard checked against its digest)."""
    from loader.storage.remotepack import fetch_dataset

    dest.mkdir()
    fetch_dataset(url, dest)
    return dest


def _pack_local(src: Path, dst: Path, **kw) -> Path:
    loader.pack(src, dst, workers=1, progress=False, **kw)
    return dst


def test_pack_to_s3_uploads_the_local_pack_byte_for_byte(image_tree, tmp_path, s3_env, s3_server, monkeypatch):
    from loader.storage import remotepack

    monkeypatch.chdir(tmp_path)
    staged: dict[str, bytes] = {}
    real = remotepack.upload_dataset

    def upload_dataset(folder, store, old_keys=(), **kw):
        staged.update(_local_files(folder))
        return real(folder, store, old_keys, **kw)

    monkeypatch.setattr(remotepack, "upload_dataset", upload_dataset)
    url = f"s3://{s3_env}/team/photos.packed"
    report = loader.pack(image_tree, url, shards=2, workers=1, progress=False)
    assert report.dst == url and report.num_records == 9
    remote = _objects(s3_server, s3_env, "team/photos.packed")
    assert remote == staged                               # every object is the staged file, byte for byte
    assert not (tmp_path / "s3:").exists()                # never again a local folder named like the URL
    m = json.loads(remote["manifest.json"])
    for s in m["shards"]:                                 # each digest is of the uploaded shard object
        (tmp_path / "fetched").write_bytes(remote[s["name"]])
        assert s["digest"] == file_digest(tmp_path / "fetched")

    # ... and the files of a local pack of SRC, byte for byte (shards and digests included: reproducible).
    local = tmp_path / "local.packed"
    loader.pack(image_tree, local, shards=2, workers=1, progress=False)
    assert _local_files(local) == remote


def test_digests_are_read_and_checked(image_tree, tmp_path):
    dst = tmp_path / "p.packed"
    loader.pack(image_tree, dst, shards=2, workers=1, progress=False)
    assert read_manifest(dst).shard_digests == (file_digest(dst / "shard-00000.lmdb"),
                                                file_digest(dst / "shard-00001.lmdb"))
    obj = json.loads((dst / "manifest.json").read_text())
    for s in obj["shards"]:
        del s["digest"]                                   # an index written before digests: still reads
    (dst / "manifest.json").write_text(json.dumps(obj))
    assert read_manifest(dst).shard_digests == (None, None)
    obj["shards"][1]["digest"] = "md5:abc"
    (dst / "manifest.json").write_text(json.dumps(obj))
    with pytest.raises(DatasetError, match=r"shard 'shard-00001.lmdb' has a bad digest 'md5:abc'"):
        read_manifest(dst)


def test_cli_pack_info_verify_on_s3(image_tree, s3_env):
    url = f"s3://{s3_env}/p/photos.packed"
    r = run_cli("pack", str(image_tree), url, "--workers", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"packed 9 images (0 skipped) into {url}: 3 classes, 1 shard, ")
    assert not (REPO / "s3:").exists()
    r = run_cli("info", url)
    assert r.returncode == 0, r.stderr
    assert f"dataset   {url}" in r.stdout and "records   9 " in r.stdout and "shards    1" in r.stdout
    assert "shard_size_mb=64 " in r.stdout          # the default for a URL (local: 512)
    r = run_cli("verify", url, "--no-decode", "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"verified 9 records in {url}: 0 bad (all good)" in r.stdout


def test_remote_shard_not_matching_its_digest_is_refused(image_tree, tmp_path, s3_env, s3_server):
    from loader.storage.remotepack import fetch_dataset

    url = f"s3://{s3_env}/p.packed"
    loader.pack(image_tree, url, shards=2, workers=1, progress=False)
    c = s3_client(s3_server)
    body = c.get_object(Bucket=s3_env, Key="p.packed/shard-00001.lmdb")["Body"].read()
    c.put_object(Bucket=s3_env, Key="p.packed/shard-00001.lmdb", Body=body[:-1] + bytes([body[-1] ^ 1]))
    (tmp_path / "got").mkdir()
    with pytest.raises(DatasetError, match=rf"^{url}/shard-00001.lmdb: the downloaded shard does not match "
                                           r"the digest in manifest.json"):
        fetch_dataset(url, tmp_path / "got")
    assert not (tmp_path / "got" / "shard-00001.lmdb").exists()


def test_overwrite_replaces_only_a_packed_dataset(image_tree, s3_env, s3_server):
    url = f"s3://{s3_env}/p.packed"
    loader.pack(image_tree, url, shards=3, workers=1, progress=False)
    with pytest.raises(PackError, match=rf"^{url} already holds a packed dataset; pass `overwrite` to replace it$"):
        loader.pack(image_tree, url, shards=2, workers=1, progress=False)
    loader.pack(image_tree, url, shards=2, workers=1, progress=False, overwrite=True)
    objects = _objects(s3_server, s3_env, "p.packed")
    m = json.loads(objects["manifest.json"])
    # The new shards were numbered past the old ones (the old dataset stayed whole while they went up);
    # the old shards are gone.
    assert [s["name"] for s in m["shards"]] == ["shard-00003.lmdb", "shard-00004.lmdb"]
    assert sorted(k for k in objects if k.endswith(".lmdb")) == ["shard-00003.lmdb", "shard-00004.lmdb"]
    assert m["num_records"] == 9 and dataset_info(url)["shards"][1]["name"] == "shard-00004.lmdb"
    loader.pack(image_tree, url, shards=1, workers=1, progress=False, overwrite=True)   # no collision now
    assert sorted(k for k in _objects(s3_server, s3_env, "p.packed") if k.endswith(".lmdb")) == ["shard-00000.lmdb"]

    c = s3_client(s3_server)
    c.put_object(Bucket=s3_env, Key="mine/notes.txt", Body=b"keep me")
    with pytest.raises(PackError, match=rf"^s3://{s3_env}/mine holds objects that are not a packed dataset "
                                        r"\(e.g. 'notes.txt'\)"):
        loader.pack(image_tree, f"s3://{s3_env}/mine", workers=1, progress=False, overwrite=True)
    c.put_object(Bucket=s3_env, Key="fake/manifest.json", Body=b'{"format": "something else"}')
    with pytest.raises(PackError, match=rf"^s3://{s3_env}/fake/manifest.json is not a loader manifest"):
        loader.pack(image_tree, f"s3://{s3_env}/fake", workers=1, progress=False, overwrite=True)
    assert c.get_object(Bucket=s3_env, Key="mine/notes.txt")["Body"].read() == b"keep me"
    assert set(_objects(s3_server, s3_env, "fake")) == {"manifest.json"}


def test_interrupted_upload_leaves_no_manifest_and_a_rerun_succeeds(image_tree, tmp_path, s3_env, s3_server,
                                                                     monkeypatch):
    import tempfile

    from loader.storage.objectstore import ObjectStore

    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    real = ObjectStore.upload

    def upload(self, src, key):
        if key == "manifest.json":
            raise DatasetError(f"{self.url}/{key}: cannot upload it: injected")
        return real(self, src, key)

    url = f"s3://{s3_env}/p.packed"
    monkeypatch.setattr(ObjectStore, "upload", upload)
    with pytest.raises(DatasetError, match="injected"):
        loader.pack(image_tree, url, shards=2, workers=1, progress=False)
    keys = set(_objects(s3_server, s3_env, "p.packed"))
    assert "manifest.json" not in keys and "shard-00000.lmdb" in keys     # shards first; no commit marker
    assert list(staging.iterdir()) == []                                   # the staging folder is gone
    with pytest.raises(DatasetError, match=rf"^not a packed dataset: {url} has no manifest.json"):
        dataset_info(url)
    monkeypatch.setattr(ObjectStore, "upload", real)
    assert loader.pack(image_tree, url, shards=2, workers=1, progress=False).num_records == 9
    assert json.loads(_objects(s3_server, s3_env, "p.packed")["manifest.json"])["num_records"] == 9


def test_missing_object_and_bucket_are_one_line(s3_env):
    from loader.storage.objectstore import open_store

    with pytest.raises(DatasetError, match=rf"^s3://{s3_env}/nothing/here/manifest.json does not exist "
                                           r"\(the object was not found while trying to read it\); check the URL$"):
        open_store(f"s3://{s3_env}/nothing/here").read("manifest.json")
    with pytest.raises(DatasetError, match=r"^s3://no-such-bucket-x/p/manifest.json does not exist \(its bucket "
                                           r"was not found"):
        open_store("s3://no-such-bucket-x/p").read("manifest.json")
    r = run_cli("info", f"s3://{s3_env}/nothing")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].endswith(
        f"not a packed dataset: s3://{s3_env}/nothing has no manifest.json; create one with `loader pack SRC DST`")


def test_wrong_credentials_are_one_line_naming_what_to_set(s3_env, monkeypatch):
    import moto.settings

    from loader.storage.objectstore import open_store

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)   # moto checks keys from now on
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(DatasetError) as e:
        open_store(f"s3://{s3_env}/p").read("manifest.json")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"s3://{s3_env}/p/manifest.json: access denied while trying to read it; set "
                          f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE")


def test_missing_extra_is_one_line_naming_it(image_tree):
    code = ("import sys; sys.modules['obstore'] = None\n"
            "import loader\n"
            "from loader.errors import LoaderError\n"
            f"try:\n    loader.pack({str(image_tree)!r}, 's3://b/x.packed', progress=False)\n"
            "except LoaderError as e:\n    print(type(e).__name__, e)\n"
            "from loader.cli import main\n"
            "sys.exit(main(['info', 'gs://b/x.packed']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.stdout == "LoaderError s3://b/x.packed needs the object-store extra: pip install 'loader[remote]'\n"
    assert r.returncode != 0
    assert r.stderr == "error: gs://b/x.packed needs the object-store extra: pip install 'loader[remote]'\n"


class _Flaky(Exception):
    pass


def test_transient_failures_are_retried_with_bounded_jittered_backoff():
    pytest.importorskip("obstore")
    from loader.storage import objectstore as o

    sleeps: list[float] = []
    store = o.ObjectStore("s3://b/p", sleep=sleeps.append)
    calls = iter([_Flaky("503 Service Unavailable: SlowDown"), o._Truncated("body ended after 3 of 9 bytes"),
                  ConnectionResetError("connection reset by peer"), b"ok"])

    def fn():
        x = next(calls)
        if isinstance(x, BaseException):
            raise x
        return x
    assert store._call(fn, "k", "read it") == b"ok"
    assert len(sleeps) == 3 and all(0 <= s <= o._BACKOFF_FIRST * 2 ** i for i, s in enumerate(sleeps))

    sleeps.clear()

    def always():
        raise _Flaky("503 SlowDown")
    with pytest.raises(DatasetError, match=rf"^s3://b/p/k: cannot read it: 503 SlowDown; gave up after "
                                           rf"{o.RETRIES + 1} attempts"):
        store._call(always, "k", "read it")
    assert len(sleeps) == o.RETRIES

    def denied():
        raise _Flaky("403 Forbidden")
    with pytest.raises(DatasetError, match=r"access denied"):
        store._call(denied, "k", "read it")
    assert len(sleeps) == o.RETRIES                       # not retried



def test_refused_connection_is_retried_then_one_line(monkeypatch):
    pytest.importorskip("obstore")
    import socket

    from loader.storage import objectstore as o

    with socket.socket() as sock:               # a port nothing listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        sleeps: list[float] = []
        store = o.ObjectStore("s3://bkt/p", sleep=sleeps.append)
        with pytest.raises(DatasetError) as e:
            store.read("manifest.json")
    msg = str(e.value)
    assert msg.startswith("s3://bkt/p/manifest.json: cannot read it: ") and "\n" not in msg
    assert f"; gave up after {o.RETRIES + 1} attempts in " in msg
    assert len(sleeps) == o.RETRIES


def test_missing_credentials_are_one_line_naming_what_to_set(monkeypatch):
    pytest.importorskip("obstore")
    import os

    from loader.storage.objectstore import open_store

    for k in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(k)
    with pytest.raises(DatasetError, match=r"^az://container/p/manifest.json: no credentials found to read it; "
                                           r"set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY"):
        open_store("az://container/p").read("manifest.json")


def test_file_url_packs_the_local_folder(image_tree, tmp_path):
    dst = tmp_path / "via-url.packed"
    report = loader.pack(image_tree, f"file://{dst}", workers=1, progress=False)
    assert report.num_records == 9 and read_manifest(dst).num_records == 9
    assert not (tmp_path / "file:").exists() and not Path("file:").exists()


def test_overwrite_interrupted_while_shards_upload_leaves_the_old_dataset(image_tree, tmp_path, s3_env, s3_server,
                                                                           monkeypatch):
    from loader.storage.objectstore import ObjectStore
    from loader.storage.remotepack import fetch_dataset

    url = f"s3://{s3_env}/p.packed"
    loader.pack(image_tree, url, shards=3, workers=1, progress=False)
    before = _objects(s3_server, s3_env, "p.packed")
    real = ObjectStore.upload

    def upload(self, src, key):
        if key == "shard-00004.lmdb":             # the second new shard (numbered past the old three)
            raise DatasetError(f"{self.url}/{key}: cannot upload it: injected")
        return real(self, src, key)

    monkeypatch.setattr(ObjectStore, "upload", upload)
    with pytest.raises(DatasetError, match="injected"):
        loader.pack(image_tree, url, shards=2, workers=1, progress=False, overwrite=True)
    after = _objects(s3_server, s3_env, "p.packed")
    assert {k: v for k, v in after.items() if k in before} == before     # the old dataset, untouched
    (tmp_path / "got").mkdir()
    fetch_dataset(url, tmp_path / "got")                                  # and whole: digests match
    assert read_manifest(tmp_path / "got").num_records == 9

    def upload_index_fails(self, src, key):
        if key == "widths.1.npy":                 # the last index file (generation 1), just before the manifest
            raise DatasetError(f"{self.url}/{key}: cannot upload it: injected")
        return real(self, src, key)

    monkeypatch.setattr(ObjectStore, "upload", upload_index_fails)
    with pytest.raises(DatasetError, match="injected"):
        loader.pack(image_tree, url, shards=2, workers=1, progress=False, overwrite=True)
    after = _objects(s3_server, s3_env, "p.packed")
    assert {k: v for k, v in after.items() if k in before} == before     # still the old dataset, whole
    assert "sources.1.bin" in after and "widths.1.npy" not in after     # the new index's files beside it
    monkeypatch.setattr(ObjectStore, "upload", real)
    loader.pack(image_tree, url, shards=2, workers=1, progress=False, overwrite=True)
    # Only the new dataset is left: the local pack's files, the index under a generation past the
    # leftovers' (2), the shards numbered past every shard there (0-2 old, 3 then 4-5 left by the two).
    ref = _local_files(_pack_local(image_tree, tmp_path / "ref.packed", shards=2))
    names = dict(zip(index_files().values(), index_files(2).values()))
    names.update({"shard-00000.lmdb": "shard-00006.lmdb", "shard-00001.lmdb": "shard-00007.lmdb"})
    got = _objects(s3_server, s3_env, "p.packed")
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {
        names.get(k, k): v for k, v in ref.items() if k != "manifest.json"}
    assert read_manifest(_fetched(url, tmp_path / "again")).num_records == 9


def test_kill_9_during_upload_leaves_no_dataset_and_a_rerun_succeeds(image_tree, tmp_path, s3_env, s3_server,
                                                                     monkeypatch):
    url = f"s3://{s3_env}/p.packed"
    monkeypatch.setenv("TMPDIR", str(tmp_path))     # the killed pack's staging folder stays there
    monkeypatch.setenv("LOADER_FAULT", "upload:sources.bin")
    r = run_cli("pack", str(image_tree), url, "--shards", "2", "--workers", "1", "--quiet")
    assert r.returncode == -9
    keys = set(_objects(s3_server, s3_env, "p.packed"))
    assert {"shard-00000.lmdb", "shard-00001.lmdb"} <= keys and "manifest.json" not in keys
    r = run_cli("info", url)
    assert r.returncode != 0 and "has no manifest.json" in r.stderr
    monkeypatch.delenv("LOADER_FAULT")
    r = run_cli("pack", str(image_tree), url, "--shards", "2", "--workers", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("verify", url, "--no-decode", "--quiet")
    assert r.returncode == 0 and "9 records" in r.stdout, r.stderr


def test_aws_profile_is_read_and_no_credentials_is_one_line(s3_env, tmp_path, monkeypatch):
    from loader.storage.objectstore import open_store

    (tmp_path / "credentials").write_text("[team]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    (tmp_path / "config").write_text("[profile team]\nregion = us-east-1\n")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")     # no instance role to look for here
    with pytest.raises(DatasetError, match=rf"^s3://{s3_env}/p/manifest.json: access denied while trying to read "
                                           r"its size; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \(or"):
        open_store(f"s3://{s3_env}/p").size("manifest.json")
    monkeypatch.setenv("AWS_PROFILE", "team")
    assert open_store(f"s3://{s3_env}/p").size("manifest.json") is None      # signed with the profile's keys


def test_cli_names_the_overwrite_flag(image_tree, s3_env):
    url = f"s3://{s3_env}/p.packed"
    assert run_cli("pack", str(image_tree), url, "--workers", "1", "--quiet").returncode == 0
    r = run_cli("pack", str(image_tree), url, "--workers", "1", "--quiet")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (f"error: {url} already holds a packed dataset; pass --overwrite "
                                                 f"to replace it")
