"""``az://`` and ``gs://`` against real emulators on loopback (tests/emulators.py): Azurite and fake-gcs-server.

Azure: ``loader pack SRC az://...`` then ``open_dataset`` / ``ImageLoader`` read back exactly the local pack's
shards, records and batches; a missing object, a missing container and a wrong account key are one line.

GCS: fake-gcs-server serves obstore's reads (GET, ranged GET, HEAD, list) but not its writes: obstore writes
through GCS's XML API (``PUT /BUCKET/OBJECT``; ``POST /BUCKET/OBJECT?uploads`` for multipart), which
fake-gcs-server routes to its JSON upload handler and answers ``400 invalid uploadType`` (v1.54.0
fakestorage/server.go:327 -> upload.go:161; unchanged in its newest source, v1.55.1+11). A bare PUT is an
upload there only as a signed URL (an ``X-Goog-Algorithm`` query), and that answer has no ETag header, which
obstore requires; the XML multipart API is not implemented (upstream issues 331 and 852 open). So:

- a pack put into the emulator through its JSON API reads back through loader, directly;
- the pack to ``gs://`` straight at the emulator is pinned as that one-line 400, so the day the emulator
  accepts the write this test says so;
- the pack to ``gs://`` through ``GcsShim`` (tests/emulators.py), which adds exactly those two things (the
  query on the PUT, the ETag on its answer) and passes the rest through, is byte-identical to the local pack,
  overwrites, and survives a kill before its manifest. That is obstore's GCS client and the emulator's
  storage with two header fixes of ours, not GCS's own upload answers; and only single-PUT uploads (every
  object up to 16 MiB), since the emulator has no XML multipart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import epoch_batches, pack_jpeg_classes, record_bytes, run_cli

import loader
from loader import ImageLoader
from loader.errors import DatasetError, LoaderError
from loader.format.dataset import open_dataset
from loader.storage.objectstore import open_store

pytest_plugins = ["emulators"]

SHARDS = 4


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """24 small JPEGs in 3 classes, 4 shards; ``packed.parent / "src"`` is the image folder."""
    root = tmp_path_factory.mktemp("emulators")
    return pack_jpeg_classes(root, classes=3, per_class=8, shards=SHARDS, seed_step=30, size=(56, 40))


@pytest.fixture(scope="module")
def packed_other(tmp_path_factory) -> Path:
    """Another 24 JPEGs (4 classes, other sizes) in 3 shards: what an ``overwrite`` replaces ``packed`` with."""
    root = tmp_path_factory.mktemp("emulators-other")
    return pack_jpeg_classes(root, classes=4, per_class=6, shards=3, seed_step=40, size=(48, 64))


def assert_reads_back(url: str, packed: Path, cache: Path) -> None:
    """open_dataset(url) and ImageLoader(url) give the local pack's records, labels and batches."""
    ds, local = open_dataset(url, cache_dir=cache), open_dataset(packed)
    assert record_bytes(ds) == record_bytes(local) and ds.labels.tolist() == local.labels.tolist()
    kw = dict(batch_size=4, image_size=32, device="cpu", seed=5, num_threads=1)
    want, got = epoch_batches(ImageLoader(packed, **kw)), epoch_batches(ImageLoader(url, cache_dir=cache, **kw))
    assert len(want) == len(got) == 12
    for (xa, ya), (xb, yb) in zip(want, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ------------------------------------------------------------------------------------------------ Azure


def test_a_pack_to_azurite_reads_back_as_the_local_pack(packed, az_env, tmp_path):
    url = f"az://{az_env}/photos.packed"
    loader.pack(packed.parent / "src", url, shards=SHARDS, workers=1, progress=False)
    store = open_store(url)
    shards = sorted(f.name for f in packed.glob("shard-*.lmdb"))
    assert [k for k in store.list() if k.startswith("shard-")] == shards
    assert all(store.read(k) == (packed / k).read_bytes() for k in shards)     # byte-reproducible shards
    assert_reads_back(url, packed, tmp_path / "cache")


def test_azurite_missing_object_and_container_are_one_line(packed, az_env, tmp_path):
    with pytest.raises(DatasetError) as info:
        open_dataset(f"az://{az_env}/nothing.packed", cache_dir=tmp_path / "cache")
    assert str(info.value) == (f"not a packed dataset: az://{az_env}/nothing.packed has no manifest.json; create one "
                               f"with `loader pack SRC az://{az_env}/nothing.packed`")
    with pytest.raises(DatasetError) as info:
        open_store(f"az://{az_env}/p").read("gone.bin")
    assert str(info.value) == (f"az://{az_env}/p/gone.bin does not exist (the object was not found while trying to "
                               f"read it); check the URL")
    with pytest.raises(DatasetError) as info:
        open_store("az://no-such-container/p").read("manifest.json")
    assert str(info.value) == ("az://no-such-container/p/manifest.json does not exist (its bucket was not found "
                               "while trying to read it); check the URL")


def test_azurite_refuses_a_wrong_account_key_in_one_line(packed, az_env, monkeypatch):
    open_store(f"az://{az_env}/p").upload(packed / "manifest.json", "manifest.json")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25n")
    with pytest.raises(DatasetError) as info:
        open_store(f"az://{az_env}/p").read("manifest.json")
    assert str(info.value) == (f"az://{az_env}/p/manifest.json: access denied while trying to read it; set "
                               f"AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN, "
                               f"or a managed identity); AZURE_STORAGE_ENDPOINT for Azurite")


# ------------------------------------------------------------------------------------------------ GCS


def put_pack(packed: Path, endpoint: str, bucket: str, prefix: str) -> str:
    from emulators import gcs_put

    for f in sorted(packed.iterdir()):
        gcs_put(endpoint, bucket, f"{prefix}/{f.name}", f.read_bytes())
    return f"gs://{bucket}/{prefix}"


def test_a_pack_in_fake_gcs_reads_back_as_the_local_pack(packed, gcs_env, fake_gcs, tmp_path):
    url = put_pack(packed, fake_gcs, gcs_env, "photos.packed")
    store = open_store(url)
    assert list(store.list()) == sorted(f.name for f in packed.iterdir())
    assert store.size("shard-00001.lmdb") == (packed / "shard-00001.lmdb").stat().st_size
    assert store.read("shard-00001.lmdb", 100, 900) == (packed / "shard-00001.lmdb").read_bytes()[100:900]
    assert_reads_back(url, packed, tmp_path / "cache")


def test_packing_to_fake_gcs_stops_at_its_missing_xml_upload_in_one_line(packed, gcs_env):
    with pytest.raises(LoaderError) as info:
        loader.pack(packed.parent / "src", f"gs://{gcs_env}/photos.packed", shards=SHARDS, workers=1, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"gs://{gcs_env}/photos.packed/shard-00000.lmdb: cannot upload it: ")
    assert "Error performing PUT http://127" in msg       # the XML API's PUT /BUCKET/OBJECT (loader cuts the URL)
    assert "400 Bad Request" in msg and "invalid uploadType" in msg
    assert "gave up after" not in msg       # a 400 is not retried (obstore's "retry_timeout: 180s" is no timeout)
    assert not open_store(f"gs://{gcs_env}/photos.packed").size("manifest.json")     # nothing a reader accepts


def test_fake_gcs_missing_object_is_one_line(gcs_env, tmp_path):
    with pytest.raises(DatasetError) as info:
        open_dataset(f"gs://{gcs_env}/nothing.packed", cache_dir=tmp_path / "cache")
    assert str(info.value) == (f"not a packed dataset: gs://{gcs_env}/nothing.packed has no manifest.json; create one "
                               f"with `loader pack SRC gs://{gcs_env}/nothing.packed`")
    with pytest.raises(DatasetError) as info:
        open_store(f"gs://{gcs_env}/p").read("gone.bin")
    assert str(info.value) == (f"gs://{gcs_env}/p/gone.bin does not exist (the object was not found while trying to "
                               f"read it); check the URL")


@pytest.mark.parametrize("bad", ["missing file", "bad key"])
def test_an_unusable_gcs_credential_is_one_line_naming_what_to_set(gcs_env, fake_gcs, tmp_path, monkeypatch, bad):
    """fake-gcs-server checks no credential, so a refused one cannot be shown here; one that cannot be used
    (a service-account file that is not there, or whose key does not parse) fails before any request."""
    sa = tmp_path / "sa.json"
    if bad == "bad key":     # token_uri and gcs_base_url on loopback: nothing here may reach out
        sa.write_text(json.dumps({"type": "service_account", "client_email": "x@example.iam.gserviceaccount.com",
                                  "private_key_id": "k", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"
                                  "-----END PRIVATE KEY-----\n", "token_uri": f"{fake_gcs}/token",
                                  "gcs_base_url": fake_gcs}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa))
    with pytest.raises(DatasetError) as info:
        open_store(f"gs://{gcs_env}/p").read("manifest.json")
    assert str(info.value) == (f"gs://{gcs_env}/p/manifest.json: no credentials found to read it; set "
                               f"GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON file (or run with a service "
                               f"account); STORAGE_EMULATOR_HOST for an emulator")


def test_a_service_account_file_with_an_http_gcs_base_url_reaches_the_emulator(packed, gcs_env, fake_gcs, tmp_path,
                                                                                monkeypatch):
    """obstore's documented emulator file (``gcs_base_url``, ``disable_oauth``) without STORAGE_EMULATOR_HOST:
    loader allows its http:// URL."""
    url = put_pack(packed, fake_gcs, gcs_env, "photos.packed")
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps({"gcs_base_url": fake_gcs, "disable_oauth": True, "client_email": "", "private_key": "",
                              "private_key_id": ""}))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT", str(sa))
    ds = open_dataset(url, cache_dir=tmp_path / "cache")
    assert record_bytes(ds) == record_bytes(open_dataset(packed))


# ------------------------------------------------------------------------------ GCS writes through the shim
# Every object of these packs is a few kB (24 small JPEGs; the test checks < 16 MiB), so obstore uploads each
# with one PUT, which the shim translates; its multipart upload (files > 16 MiB) the emulator does not have.

MULTIPART_B = 16 << 20      # loader's obstore.put chunk_size: a file larger than this goes up in parts


def gs_objects(url: str) -> dict[str, bytes]:
    """Every object under the prefix ``url``, by name, read back through loader's store."""
    store = open_store(url)
    return {k: store.read(k) for k in store.list()}


def test_a_pack_to_gs_through_the_shim_is_the_local_pack_byte_for_byte(packed, gcs_shim_env, gcs_shim, tmp_path):
    url = f"gs://{gcs_shim_env}/photos.packed"
    loader.pack(packed.parent / "src", url, shards=SHARDS, workers=1, progress=False)
    local = {f.name: f.read_bytes() for f in packed.iterdir()}
    assert max(map(len, local.values())) < MULTIPART_B          # single PUTs only: see above
    assert "manifest.json" in local and len([k for k in local if k.startswith("shard-")]) == SHARDS
    assert gs_objects(url) == local         # every shard, index file and the manifest, byte for byte
    # Every object went up through the shim's translated PUT, once, and the manifest last.
    assert sorted(gcs_shim.puts) == sorted(f"{gcs_shim_env}/photos.packed/{k}" for k in local)
    assert gcs_shim.puts[-1] == f"{gcs_shim_env}/photos.packed/manifest.json"
    assert_reads_back(url, packed, tmp_path / "cache")


def test_overwrite_through_the_shim_leaves_only_the_new_pack(packed, packed_other, gcs_shim_env, gcs_shim,
                                                            tmp_path):
    url = f"gs://{gcs_shim_env}/photos.packed"
    assert not set(record_bytes(open_dataset(packed))) & set(record_bytes(open_dataset(packed_other)))
    loader.pack(packed.parent / "src", url, shards=SHARDS, workers=1, progress=False)
    before = gs_objects(url)
    gcs_shim.puts.clear()
    loader.pack(packed_other.parent / "src", url, shards=3, workers=1, progress=False, overwrite=True)
    after = gs_objects(url)
    # Nothing at the prefix but what this pack uploaded: no object of the old pack is left that it lacks.
    assert set(after) == {p.removeprefix(f"{gcs_shim_env}/photos.packed/") for p in gcs_shim.puts}
    assert set(before) - set(after)         # old objects were deleted (the old pack had 4 shards, this one 3)
    new_shards = sorted(f.read_bytes() for f in packed_other.glob("shard-*.lmdb"))
    assert sorted(v for k, v in after.items() if k.startswith("shard-")) == new_shards     # names may move
    assert_reads_back(url, packed_other, tmp_path / "cache")


def test_a_pack_killed_before_its_manifest_upload_leaves_no_dataset_and_a_rerun_succeeds(packed, gcs_shim_env,
                                                                                         tmp_path, monkeypatch):
    url = f"gs://{gcs_shim_env}/photos.packed"
    monkeypatch.setenv("TMPDIR", str(tmp_path))     # the killed pack's staging folder stays there
    monkeypatch.setenv("LOADER_FAULT", "upload:manifest.json")
    # run_cli passes os.environ on: STORAGE_EMULATOR_HOST (the shim), LOADER_FAULT, TMPDIR, no GOOGLE_*.
    r = run_cli("pack", str(packed.parent / "src"), url, "--shards", str(SHARDS), "--workers", "1", "--quiet")
    assert r.returncode == -9, r.stderr             # SIGKILLed just before the manifest's upload
    monkeypatch.delenv("LOADER_FAULT")
    local = {f.name: f.read_bytes() for f in packed.iterdir()}
    assert gs_objects(url) == {k: v for k, v in local.items() if k != "manifest.json"}     # all but the commit
    with pytest.raises(DatasetError) as info:
        open_dataset(url, cache_dir=tmp_path / "cache")
    assert str(info.value) == (f"not a packed dataset: {url} has no manifest.json; create one with "
                               f"`loader pack SRC {url}`")
    loader.pack(packed.parent / "src", url, shards=SHARDS, workers=1, progress=False)      # the rerun
    assert gs_objects(url) == local
    ds = open_dataset(url, cache_dir=tmp_path / "cache")
    assert record_bytes(ds) == record_bytes(open_dataset(packed)) and ds.labels.tolist() == \
        open_dataset(packed).labels.tolist()


def test_a_multipart_upload_through_the_shim_is_the_emulators_400_untranslated(gcs_shim_env, gcs_shim, tmp_path):
    """The limit of the shim: a file over 16 MiB goes up as XML multipart (``POST ?uploads`` first),
    which the shim passes on as it is and the emulator does not implement; this fails the day it does."""
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(MULTIPART_B + 1))     # exactly 16 MiB is one PUT
    url = f"gs://{gcs_shim_env}/p"
    with pytest.raises(DatasetError) as info:
        open_store(url).upload(big, "big.bin")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{url}/big.bin: cannot upload it: ")
    assert "Error performing POST http://127" in msg and "?uploads" in msg
    assert "400 Bad Request" in msg and "invalid uploadType" in msg
    assert gcs_shim.puts == [] and list(open_store(url).list()) == []
