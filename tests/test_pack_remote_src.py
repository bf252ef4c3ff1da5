"""``loader pack s3://bucket/photos/ DST``: a folder uploaded to S3 (moto on loopback, tests/s3server.py)
packs to the bytes of the same folder packed locally (every file of DST), with the local engine and with
Ray (1 and 2 tasks, tests/raycluster.py), for class folders, a labels file, --unlabeled, pinned classes
and --shuffle-seed; the listing's rules (hidden keys, nested keys, class order, files directly under SRC);
the one-line errors for a missing bucket, an empty prefix, refused credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import jpeg_bytes, run_cli, write

import loader
from loader.errors import PackError

pytest_plugins = ["s3server", "raycluster"]     # s3_server, s3_env; ray_cluster, ray_connected (one a session)


def _photos(root: Path) -> Path:
    """A folder that exercises the listing's rules: 4 classes, "c1-x" (whose keys sort before "c1/"'s
    but whose class comes after), a nested file, hidden files and a hidden folder, a file directly in
    SRC, a BMP (converted), a file that is not an image, an empty file, a name with a space and an é."""
    from PIL import Image

    src = root / "src"
    for label in range(3):
        for i in range(3):
            write(src / f"c{label}" / f"{i:02d}.jpg", jpeg_bytes(seed=10 * label + i, label=label))
    write(src / "c1" / "sub" / "deep.jpg", jpeg_bytes(seed=40))
    write(src / "c1" / "sub-a.jpg", jpeg_bytes(seed=41))
    write(src / "c1-x" / "a b é.jpg", jpeg_bytes(seed=42))
    Image.new("RGB", (40, 30), (200, 10, 60)).save(src / "c1" / "b.bmp")
    write(src / "c2" / "bad.jpg", b"not an image")
    write(src / "c0" / "empty.jpg", b"")
    write(src / "c0" / ".DS_Store", b"hidden junk")
    write(src / "c2" / ".cache" / "x.jpg", jpeg_bytes(seed=43))
    write(src / ".hidden" / "y.jpg", jpeg_bytes(seed=44))
    write(src / "top.jpg", jpeg_bytes(seed=45))
    return src


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photos(tmp_path_factory.mktemp("remote-src"))


def _upload(endpoint: str, bucket: str, src: Path, prefix: str = "photos") -> str:
    """Every file of ``src`` (hidden ones too) as an object under ``prefix``; returns the URL."""
    from s3server import s3_client

    c = s3_client(endpoint)
    for f in sorted(src.rglob("*")):
        if f.is_file():
            c.put_object(Bucket=bucket, Key=f"{prefix}/{f.relative_to(src).as_posix()}", Body=f.read_bytes())
    return f"s3://{bucket}/{prefix}"


@pytest.fixture
def uploaded(photos, s3_env, s3_server) -> str:
    return _upload(s3_server, s3_env, photos)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _labels(tmp_path: Path) -> Path:
    """A labels file (outside SRC): multi-label, a nested file, the bad file, a hidden file named explicitly."""
    labels = tmp_path / "labels.csv"
    rows = ["c2/02.jpg,dog", "c0/00.jpg,cat|dog", "c1/b.bmp,cat", "c2/bad.jpg,dog", "c1/sub/deep.jpg,bird",
            ".hidden/y.jpg,cat", '"c1-x/a b é.jpg",bird']
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    return labels


# The options a pack from the bucket is compared under: (name, pack keyword arguments).
CASES = [
    ("folders", dict(shards=3)),
    ("pinned", dict(shards=2, classes=["c2", "c1-x", "c1", "c0", "none"])),
    ("unlabeled", dict(shards=2, unlabeled=True)),
    ("shuffled", dict(shards=3, shuffle_seed=7)),
]


@pytest.mark.parametrize("workers", [1, 2])
def test_local_engine_packs_the_bucket_to_the_folder_s_bytes(photos, uploaded, tmp_path, workers):
    for name, kw in CASES:
        local, remote = tmp_path / f"{name}.local", tmp_path / f"{name}.remote"
        want = loader.pack(photos, local, workers=1, progress=False, **kw)
        got = loader.pack(uploaded + "/", remote, workers=workers, progress=False, **kw)   # a trailing / too
        assert _files(remote) == _files(local), name       # manifest, columns, sources, shards, skipped.tsv
        assert (got.num_records, got.num_skipped, got.classes) == (want.num_records, want.num_skipped,
                                                                    want.classes), name
    folders = loader.open_dataset(tmp_path / "folders.remote")
    assert list(folders.manifest.classes) == ["c0", "c1", "c1-x", "c2"]
    assert (tmp_path / "folders.remote" / "skipped.tsv").read_text().splitlines() == [
        "source\treason", "c0/empty.jpg\tempty file (0 bytes)", "c2/bad.jpg\tnot an image (unrecognised format)"]
    sources = [folders.manifest.source(i) for i in range(len(folders))]
    assert sources == ["c0/00.jpg", "c0/01.jpg", "c0/02.jpg", "c1/00.jpg", "c1/01.jpg", "c1/02.jpg", "c1/b.bmp",
                       "c1/sub-a.jpg", "c1/sub/deep.jpg", "c1-x/a b é.jpg", "c2/00.jpg", "c2/01.jpg", "c2/02.jpg"]
    unlabeled = loader.open_dataset(tmp_path / "unlabeled.remote")
    assert unlabeled.manifest.source(len(unlabeled) - 1) == "top.jpg"      # files directly in SRC count here


def test_labels_file_packs_the_bucket_to_the_folder_s_bytes(photos, uploaded, tmp_path):
    labels = _labels(tmp_path)
    want = loader.pack(photos, tmp_path / "local.packed", shards=2, workers=1, progress=False, labels=labels)
    got = loader.pack(uploaded, tmp_path / "remote.packed", shards=2, workers=2, progress=False, labels=labels)
    assert _files(tmp_path / "remote.packed") == _files(tmp_path / "local.packed")
    assert (got.num_records, got.num_skipped, got.num_unlisted, got.multi_label) == (6, 1, 10, True)
    assert want.num_unlisted == got.num_unlisted


def test_strict_names_the_object_s_url(uploaded, tmp_path):
    dst = tmp_path / "strict.packed"
    with pytest.raises(PackError, match=rf"^bad image {uploaded}/c0/empty\.jpg: empty file \(0 bytes\) "
                                        r"\(strict=True stops at the first bad file"):
        loader.pack(uploaded, dst, shards=2, workers=1, progress=False, strict=True)
    assert list(tmp_path.iterdir()) == []


def test_over_the_per_file_cap_is_skipped_unread_as_a_folder_s(photos, uploaded, tmp_path, monkeypatch):
    from loader.convert import imagecheck, packing

    bmp = (photos / "c1" / "b.bmp").stat().st_size
    cap = max(p.stat().st_size for p in photos.rglob("*.jpg"))     # every JPEG fits, the BMP does not
    assert bmp > cap
    monkeypatch.setattr(imagecheck, "MAX_FILE_BYTES", cap)
    monkeypatch.setattr(packing, "MAX_FILE_BYTES", cap)
    loader.pack(photos, tmp_path / "local.packed", shards=2, workers=1, progress=False)
    report = loader.pack(uploaded, tmp_path / "remote.packed", shards=2, workers=1, progress=False)
    assert _files(tmp_path / "remote.packed") == _files(tmp_path / "local.packed")
    assert ("c1/b.bmp", f"file is {bmp:,} bytes, over the per-file cap of {cap:,} (MAX_FILE_BYTES); shrink or "
                        f"split it, or leave it out of SRC") in report.skipped


def test_an_object_gone_since_the_listing_is_a_bad_file(uploaded):
    from loader.convert.imagecheck import BadImage
    from loader.convert.remotesrc import RemoteFile, read_file

    assert read_file(RemoteFile(uploaded, "c0/00.jpg")) == jpeg_bytes(seed=0, label=0)
    with pytest.raises(BadImage, match=r"^cannot read file: the object no longer exists"):
        read_file(RemoteFile(uploaded, "c0/gone.jpg"))


def test_the_cli_packs_a_bucket_with_a_pool_of_workers(photos, uploaded, tmp_path):
    """The CLI does not import torch, so its pool would fork: after the listing, a forked worker's first
    request hangs (obstore's runtime does not survive fork); the pool is started clean instead."""
    loader.pack(photos, tmp_path / "local.packed", shards=2, workers=1, progress=False)
    r = run_cli("pack", uploaded, str(tmp_path / "cli.packed"), "--shards", "2", "--workers", "2", "--quiet",
                timeout=60)
    assert r.returncode == 0, r.stderr
    assert _files(tmp_path / "cli.packed") == _files(tmp_path / "local.packed")
    assert "prefix in that layout (s3://BUCKET/PHOTOS" in " ".join(run_cli("pack", "--help").stdout.split())


def test_pool_workers_get_the_parent_s_store_settings_not_the_forkserver_s(photos, uploaded, s3_server, tmp_path):
    """A forkserver started earlier (here: with a closed port as the endpoint) hands its environment to
    the pool's workers; they read the bucket with the parent's settings of now instead."""
    import subprocess
    import sys

    from conftest import REPO

    loader.pack(photos, tmp_path / "local.packed", shards=2, workers=1, progress=False)
    code = ("import multiprocessing as mp, os, sys\n"
            "os.environ['AWS_ENDPOINT_URL'] = 'http://127.0.0.1:9'\n"
            "pool = mp.get_context('forkserver').Pool(1); pool.close(); pool.join()\n"
            "os.environ['AWS_ENDPOINT_URL'] = sys.argv[1]\n"
            "import loader\n"
            "loader.pack(sys.argv[2], sys.argv[3], shards=2, workers=2, progress=False)\n")
    r = subprocess.run([sys.executable, "-c", code, s3_server, uploaded, str(tmp_path / "fs.packed")], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _files(tmp_path / "fs.packed") == _files(tmp_path / "local.packed")


def test_missing_bucket_empty_prefix_and_refused_credentials_are_one_line(uploaded, s3_env, tmp_path, monkeypatch):
    dst = tmp_path / "x.packed"
    with pytest.raises(PackError, match=r"^SRC s3://no-such-bucket-y/photos does not exist \(its bucket was not "
                                        r"found while trying to list it\); check the URL$"):
        loader.pack("s3://no-such-bucket-y/photos", dst, progress=False)
    with pytest.raises(PackError, match=rf"^SRC s3://{s3_env}/nothing holds no objects \(an empty or missing "
                                        rf"prefix\); check the URL: SRC is a prefix in the ImageFolder layout, "
                                        rf"e.g. s3://{s3_env}/nothing/cat/001\.jpg$"):
        loader.pack(f"s3://{s3_env}/nothing", dst, progress=False)
    with pytest.raises(PackError, match=rf"^s3://{s3_env}/photos/c0 has no class folders"):
        loader.pack(f"{uploaded}/c0", dst, progress=False)
    with pytest.raises(PackError, match=rf"^DST s3://{s3_env}/photos/out\.packed is inside SRC {uploaded}; "):
        loader.pack(uploaded, f"s3://{s3_env}/photos/out.packed", progress=False)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nc0/00.jpg,cat\nc1,dog\n")
    with pytest.raises(PackError, match=rf"^{labels}:3: 'c1' is a folder, not an image file"):
        loader.pack(uploaded, dst, labels=labels, progress=False)
    labels.write_text("path,label\nc0/00.jpg,cat\nc0/nope.jpg,dog\n")
    with pytest.raises(PackError, match=rf"^{labels}:3: 'c0/nope.jpg' does not exist in SRC {uploaded}; "):
        loader.pack(uploaded, dst, labels=labels, progress=False)

    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)   # moto checks keys from now on
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(PackError) as e:
        loader.pack(uploaded, dst, progress=False)
    assert str(e.value).startswith(f"SRC {uploaded}: access denied while trying to list it; set AWS_ACCESS_KEY_ID")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]      # nothing was written


# ---------------------------------------------------------------- Ray


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_packs_the_bucket_to_the_folder_s_bytes(photos, uploaded, tmp_path, ray_connected, workers):
    labels = _labels(tmp_path)
    for name, kw in [("folders", dict(shards=3)), ("labels", dict(shards=2, labels=labels))]:
        local = tmp_path / f"{name}.local"
        loader.pack(photos, local, workers=1, progress=False, **kw)
        dst = tmp_path / f"{name}.ray"
        loader.pack(uploaded, dst, workers=workers, progress=False, engine="ray", **kw)
        assert _files(dst) == _files(local), name
        assert "c2/bad.jpg\tnot an image" in (dst / "skipped.tsv").read_text()


def test_ray_packs_a_bucket_into_a_bucket(photos, uploaded, s3_env, s3_server, tmp_path, ray_connected):
    from s3server import s3_client

    loader.pack(photos, tmp_path / "local.packed", shards=3, workers=1, progress=False)
    url = f"s3://{s3_env}/out.packed"
    loader.pack(uploaded, url, shards=3, workers=2, progress=False, engine="ray")
    c = s3_client(s3_server)
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=s3_env, Prefix="out.packed/")["Contents"]]
    got = {k.split("/", 1)[1]: c.get_object(Bucket=s3_env, Key=k)["Body"].read() for k in keys}
    assert got == _files(tmp_path / "local.packed")


def test_a_ray_task_that_cannot_read_fails_the_pack_naming_the_object(photos, uploaded, s3_env, tmp_path,
                                                                      ray_connected, monkeypatch):
    """A store the tasks cannot reach (their endpoint, set apart from the driver's, a closed port) fails the
    pack after the store's retries with one line naming the object's URL; nothing is left at DST."""
    from loader.convert import rayengine

    real = rayengine.store_env
    monkeypatch.setattr(rayengine, "store_env", lambda: {**real(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    dst = tmp_path / "failed.packed"
    with pytest.raises(PackError) as e:
        loader.pack(uploaded, dst, shards=1, workers=1, progress=False, engine="ray")
    msg = str(e.value)
    assert msg.startswith(f"{uploaded}/c0/00.jpg: cannot read it: ") and "\n" not in msg
    assert "; gave up after 6 attempts in " in msg and msg.endswith("; check the network and the store's endpoint")
    assert list(tmp_path.iterdir()) == []             # neither DST nor its partial folder
