"""``pack`` to an object-store URL, and fetching a remote dataset's files for ``info`` / ``verify``.

A reader accepts a dataset prefix only when ``manifest.json`` is there, so the manifest is the commit
marker: pack writes the dataset in a local staging folder (under ``$TMPDIR``; removed after), then
uploads the shards, the other index files, and ``manifest.json`` last. An upload interrupted at any
point leaves no new manifest (a fresh prefix: none; ``overwrite``: the old one, see below), so
nothing a reader accepts but a whole dataset; the next pack to the same URL succeeds: objects with
dataset file names and no manifest are taken as the leftovers of an interrupted pack and replaced.

``overwrite`` replaces only a prefix whose ``manifest.json`` parses as a loader manifest and that
holds nothing but dataset files, and the old dataset stays whole and readable until the new one is
committed: every new object goes up under a name the old dataset does not use. The shards are
numbered past the old ones where the names would collide; the index files get a generation past
every one at the prefix (``labels.2.npy``, ``sources.2.bin``, ...; the plain names are generation 0),
which the new manifest names (version 5, ``index_generation``: :mod:`loader.format.manifest`). Then
the new ``manifest.json`` replaces the old in one PUT (atomic in an object store: a reader gets the
old bytes or the new, whole), and the old dataset's objects the new one does not use are deleted
after. Killed at any instant, the prefix holds the old dataset (before that PUT) or the new one
(after it), each whole, plus objects no manifest names, which the next pack deletes. A reader that
read the old manifest before the PUT may find its files deleted after it: it reopens the dataset
(its cache entry is named by the manifest's bytes, so it gets the new index, never a mix). The
reports ``skipped.tsv`` and ``suspect.tsv`` keep their names (people open them; no reader does), so
they are the new pack's from just before the PUT.

Tests kill pack with a real SIGKILL just before an object's upload, ``LOADER_FAULT=upload:<key>``, or
before an old object's deletion, ``LOADER_FAULT=delete:<key>``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from loader.errors import DatasetError, PackError
from loader.format.files import file_digest, read_json, write_manifest_json
from loader.format.manifest import (
    FORMAT,
    GENERATION_KEY,
    GENERATION_VERSION,
    MANIFEST_NAME,
    index_file_generation,
    index_files,
    index_generation,
    is_dataset_file_name,
)
from loader.format.shards import shard_name
from loader.storage.objectstore import open_store
from loader.storage.store import Store

__all__ = ["fetch_dataset", "fetch_index", "pack_remote", "shard_names", "upload_dataset"]

_SHARD = re.compile(r"shard-(\d{5,})\.lmdb")


def _check_remote_dst(store: Store, url: str, overwrite: bool) -> list[str]:
    """Refuse a prefix that is not ours to write; return the keys there now."""
    keys = list(store.list())
    foreign = [k for k in keys if "/" in k or not is_dataset_file_name(k)]
    if foreign:
        raise PackError(f"{url} holds objects that are not a packed dataset (e.g. {foreign[0]!r}); choose an "
                        f"empty prefix (nothing is replaced there, even with `overwrite`)", param="overwrite")
    if MANIFEST_NAME not in keys:
        return keys                    # empty, or the leftovers of an interrupted pack: replaced
    if not overwrite:
        raise PackError(f"{url} already holds a packed dataset; pass `overwrite` to replace it", param="overwrite")
    with tempfile.TemporaryDirectory(prefix="loader-check-") as tmp:
        local = Path(tmp) / MANIFEST_NAME
        store.download(MANIFEST_NAME, local)
        try:
            obj = read_json(local)
        except DatasetError:
            obj = None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise PackError(f"{url}/{MANIFEST_NAME} is not a loader manifest: not replacing what is at {url} "
                        f"(`overwrite` replaces only a packed dataset); choose another prefix", param="overwrite")
    return keys


def _rename_shards(folder: Path, manifest: dict, old_keys: list[str]) -> list[str]:
    """Renumber the new shards in ``folder`` past the old dataset's where the names would collide, so
    uploading them leaves the old dataset whole; return the new shard names (manifest rewritten)."""
    names = [s["name"] for s in manifest["shards"]]
    old = {k for k in old_keys if _SHARD.fullmatch(k)}
    if not old & set(names):
        return names
    first = 1 + max(int(_SHARD.fullmatch(k).group(1)) for k in old)
    for i, s in enumerate(manifest["shards"]):
        s["name"] = shard_name(first + i)
        os.replace(folder / names[i], folder / s["name"])
    write_manifest_json(folder / MANIFEST_NAME, manifest)
    return [s["name"] for s in manifest["shards"]]


def shard_names(count: int, old_keys: list[str]) -> list[str]:
    """The names ``count`` new shards get at a prefix holding ``old_keys``: numbered past a live
    dataset's shards where the names would collide (as :func:`upload_dataset` renames them).

    >>> shard_names(2, ["manifest.json", "shard-00000.lmdb"])
    ['shard-00001.lmdb', 'shard-00002.lmdb']
    """
    names = [shard_name(i) for i in range(count)]
    old = {k for k in old_keys if _SHARD.fullmatch(k)}
    if MANIFEST_NAME not in old_keys or not old & set(names):
        return names
    first = 1 + max(int(_SHARD.fullmatch(k).group(1)) for k in old)
    return [shard_name(first + i) for i in range(count)]


def _rename_index(folder: Path, manifest: dict, old_keys: list[str]) -> None:
    """Give the index files in ``folder`` a generation past every one in ``old_keys`` (so uploading them
    leaves the live dataset's whole) and make the manifest name it (version 5, rewritten)."""
    generation = 1 + max((g for g in map(index_file_generation, old_keys) if g is not None), default=0)
    for plain, named in zip(index_files().values(), index_files(generation).values()):
        if (folder / plain).exists():          # the label columns only in a multi-label index
            os.replace(folder / plain, folder / named)
    manifest.pop("version")       # pack wrote version 4: the same header, plus the generation
    header = {"format": manifest.pop("format"), "version": GENERATION_VERSION, GENERATION_KEY: generation}
    write_manifest_json(folder / MANIFEST_NAME, {**header, **manifest})


def _fault(step: str, key: str) -> None:
    """Tests: a real kill -9 just before ``step`` (upload, delete) of ``key``, as ``LOADER_FAULT`` asks."""
    if os.environ.get("LOADER_FAULT") == f"{step}:{key}":
        os.kill(os.getpid(), signal.SIGKILL)


def upload_dataset(folder: Path, store: Store, old_keys: list[str] = (), *, progress: bool = False,
                   uploaded: bool = False) -> None:
    """Upload the packed dataset in ``folder`` to ``store`` (see the module docstring): the shards and the
    other files, under names a live dataset there does not use, ``manifest.json`` last (over the live
    one's, in one PUT); then delete the ``old_keys`` the new dataset does not have. ``uploaded``: the
    shards are at ``store`` already, under the names the manifest gives (:func:`shard_names`; the Ray
    engine's tasks uploaded them), and not in ``folder``."""
    manifest = read_json(folder / MANIFEST_NAME)
    live = MANIFEST_NAME in old_keys      # a dataset readers may be using (else: leftovers, replaced)
    if live and not uploaded:
        shards = _rename_shards(folder, manifest, list(old_keys))
    else:
        shards = [s["name"] for s in manifest["shards"]]
    if live:
        _rename_index(folder, manifest, list(old_keys))
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in shards
                    and p.name != MANIFEST_NAME)
    order = [*([] if uploaded else shards), *others, MANIFEST_NAME]
    total = sum((folder / n).stat().st_size for n in order)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload to {store.url}", disable=not progress,
              leave=False) as bar:
        for name in order:
            _fault("upload", name)
            store.upload(folder / name, name)
            bar.update((folder / name).stat().st_size)
    new = {*shards, *others, MANIFEST_NAME}
    for key in old_keys:
        if key not in new:
            _fault("delete", key)
            store.delete(key)


def pack_remote(pack_local, src, url: str, *, overwrite: bool, **options):
    """:func:`loader.convert.packing.pack` (passed as ``pack_local``) to an object-store URL (see the
    module docstring)."""
    t0 = time.perf_counter()
    store = open_store(url)             # the missing extra is reported before any work
    old_keys = _check_remote_dst(store, url.rstrip("/"), overwrite)   # and bad credentials too
    staging = Path(tempfile.mkdtemp(prefix="loader-pack-"))
    try:
        local = staging / "dataset.packed"
        if options.get("engine") == "ray":     # its tasks upload the shards themselves, under shard_names()
            report = pack_local(src, local, overwrite=False, remote=(url, old_keys), **options)
            upload_dataset(local, store, old_keys, progress=options.get("progress", True), uploaded=True)
        else:
            report = pack_local(src, local, overwrite=False, **options)
            upload_dataset(local, store, old_keys, progress=options.get("progress", True))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = max(time.perf_counter() - t0, 1e-9)
    return dataclasses.replace(report, dst=url, seconds=seconds, images_per_sec=report.images_per_sec *
                               report.seconds / seconds, mb_per_sec=report.mb_per_sec * report.seconds / seconds)


def fetch_index(url: str, dest: Path) -> dict[str, int]:
    """Download everything of the dataset at ``url`` but its shards into ``dest`` (of the index files,
    those its manifest names: not a killed pack's leftovers); return the size of every object there
    (shards included). No ``manifest.json`` there is the usual "not a packed dataset" error."""
    store = open_store(url)
    sizes = {k: store.size(k) for k in store.list() if "/" not in k}
    if MANIFEST_NAME not in sizes:
        raise DatasetError(f"not a packed dataset: {url} has no {MANIFEST_NAME}; create one with "
                           f"`loader pack SRC DST`")
    store.download(MANIFEST_NAME, dest / MANIFEST_NAME)
    obj = read_json(dest / MANIFEST_NAME)
    shards = {s.get("name") for s in obj.get("shards", ()) if isinstance(s, dict)} if isinstance(obj, dict) else set()
    index = set(index_files(index_generation(obj, f"{url}/{MANIFEST_NAME}")).values())
    for key in sizes:
        if (key != MANIFEST_NAME and key not in shards and is_dataset_file_name(key)
                and (index_file_generation(key) is None or key in index)):
            store.download(key, dest / key)
    return sizes


def fetch_dataset(url: str, dest: Path) -> None:
    """Download the whole dataset at ``url`` into ``dest``, each shard checked against the digest its
    manifest records (a mismatch is one :class:`DatasetError` line naming the shard and the URL)."""
    from loader.format.manifest import read_manifest

    fetch_index(url, dest)
    m = read_manifest(dest)
    store = open_store(url)
    for s, digest in zip(m.shards, m.shard_digests or [None] * len(m.shards)):
        tmp = dest / f"{s.name}.part-{os.getpid()}"
        store.download(s.name, tmp)
        if digest is not None and file_digest(tmp) != digest:
            tmp.unlink()
            raise DatasetError(f"{url}/{s.name}: the downloaded shard does not match the digest in "
                               f"{MANIFEST_NAME} ({digest}); the object was changed or damaged: re-pack with "
                               f"`loader pack SRC {url} --overwrite`")
        os.replace(tmp, dest / s.name)
