"""pack never destroys what a user owns (issue 21 A): ``overwrite`` replaces only a packed dataset,
stale-folder cleanup touches only folders pack marked as its own, and a kill at any step of
installing keeps the previous dataset (the next pack moves it back).

Kills are real: ``LOADER_FAULT=install:<point>`` makes the child ``pack`` SIGKILL itself there.
"""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loader import open_dataset, pack
from loader.errors import PackError
from tests.conftest import REPO, run_cli


def quiet_pack(src, dst, **kw):
    kw.setdefault("workers", 1)
    return pack(src, dst, progress=False, **kw)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its bytes), and every folder."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def user_folder(path: Path, manifest: bytes) -> Path:
    (path / "src").mkdir(parents=True)
    (path / "manifest.json").write_bytes(manifest)
    (path / "src" / "main.py").write_text("print('years of work')\n")
    (path / "notes.txt").write_bytes(os.urandom(1000))
    return path


# ---------------------------------------------------------------- A1: overwrite


@pytest.mark.parametrize("manifest, why", [
    (b'{"name": "my-app", "version": "1.0.0"}', "it holds 'notes.txt', which pack does not write"),
    (b'{"format": "loader.lmdb-shards", "version": 4}', "it holds 'notes.txt', which pack does not write"),
])
def test_overwrite_refuses_a_user_folder_that_has_a_manifest(image_tree, tmp_path, manifest, why):
    dst = user_folder(tmp_path / "project", manifest)
    before = snapshot(dst)
    with pytest.raises(PackError) as e:
        quiet_pack(image_tree, dst, overwrite=True)
    assert str(e.value) == (f"{dst} exists and is not a packed dataset ({why}); refusing to replace it: "
                            f"move it away yourself or choose another DST")
    assert snapshot(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "src"]   # nothing beside it either


@pytest.mark.parametrize("content, why", [
    (b'{"name": "my-app"}', "its manifest.json is not a loader manifest"),
    (b"not json at all", "its manifest.json is not a loader manifest"),
])
def test_overwrite_refuses_a_folder_whose_manifest_is_not_ours(image_tree, tmp_path, content, why):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "manifest.json").write_bytes(content)      # only names pack writes, but not a dataset of ours
    (dst / "labels.npy").write_bytes(b"mine")
    before = snapshot(dst)
    with pytest.raises(PackError, match=f"is not a packed dataset \\({why}\\)"):
        quiet_pack(image_tree, dst, overwrite=True)
    assert snapshot(dst) == before


def test_overwrite_replaces_a_packed_dataset_even_with_a_damaged_manifest(image_tree, tmp_path):
    dst = tmp_path / "out"
    quiet_pack(image_tree, dst)
    (dst / "manifest.json").write_bytes(b"\x00garbage")     # its shard is still an LMDB file: ours
    (image_tree / "a_bird" / "img_0.jpg").unlink()
    assert quiet_pack(image_tree, dst, overwrite=True).num_records == 8
    assert len(open_dataset(dst)) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_every_file_pack_writes_counts_as_a_dataset_file(image_tree, tmp_path):
    """overwrite replaces DST only if all its files are pack's: a file pack starts writing must be
    known to is_dataset_file_name, or re-packing a dataset would be refused."""
    from loader.convert.packing import SUSPECT_NAME
    from loader.format.manifest import SKIPPED_NAME, is_dataset_file_name

    dst = tmp_path / "out"
    quiet_pack(image_tree, dst, shards=3)
    names = sorted(p.name for p in dst.iterdir()) + [SKIPPED_NAME, SUSPECT_NAME, "label_offsets.npy",
                                                     "label_values.npy", "shard-00000.lmdb-lock"]
    assert [n for n in names if not is_dataset_file_name(n)] == []
    assert quiet_pack(image_tree, dst, overwrite=True).num_records == 9


# ---------------------------------------------------------------- A2: stale-folder cleanup


@pytest.mark.parametrize("overwrite", [False, True])
def test_user_folders_named_like_pack_temporaries_survive(image_tree, tmp_path, overwrite):
    pid = dead_pid()
    dst = tmp_path / "out"
    if overwrite:
        quiet_pack(image_tree, dst)
    users = []
    for name in ("out.old-12345", "out.partial-12345", f"out.old-{pid}", f"out.partial-{pid}",
                 f"out.partial-{pid}-0123456789abcdef"):          # our name pattern, but no marker inside
        folder = user_folder(tmp_path / name, b'{"name": "mine"}')
        (folder / "shard-00000.lmdb").write_bytes(b"my bytes")
        users.append(folder)
    before = {f.name: snapshot(f) for f in users}
    quiet_pack(image_tree, dst, overwrite=overwrite)
    assert {f.name: snapshot(f) for f in users} == before
    assert len(open_dataset(dst)) == 9


# ---------------------------------------------------------------- A3: killed while installing


def pack_in_child(src: Path, dst: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("LOADER_FAULT", None)
    if fault:
        env["LOADER_FAULT"] = f"install:{fault}"
    return subprocess.run([sys.executable, "-m", "loader", "pack", str(src), str(dst), "--workers", "1",
                           "--quiet", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture
def two_sources(image_tree, tmp_path):
    """``image_tree`` (9 images) and a second SRC of 8, and a failing one (no usable image)."""
    import shutil

    second = tmp_path / "second"
    shutil.copytree(image_tree, second)
    (second / "a_bird" / "img_0.jpg").unlink()
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    (bad / "a" / "x.jpg").write_bytes(b"not a jpeg")
    return image_tree, second, bad


def beside(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.parent.iterdir() if p.name.startswith(dst.name))


def test_kill_between_the_renames_keeps_the_old_dataset_and_the_next_pack_moves_it_back(two_sources, tmp_path):
    first, second, bad = two_sources
    dst = tmp_path / "out"
    quiet_pack(first, dst)
    manifest = (dst / "manifest.json").read_bytes()
    before = snapshot(dst)

    r = pack_in_child(second, dst, "--overwrite", fault="after-first-rename")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not dst.exists()                                # the one moment DST is missing
    olds = [n for n in beside(dst) if n.startswith("out.old-")]
    assert len(olds) == 1
    old = tmp_path / olds[0]
    assert len(open_dataset(old)) == 9                     # the old dataset is whole, where the message says
    info = run_cli("info", str(dst))
    assert info.returncode == 2 and f"{old} may hold the previous dataset" in info.stderr, info.stderr

    # A failing --overwrite run afterwards: it first moves the old dataset back, deletes none of it.
    r = pack_in_child(bad, dst, "--overwrite")
    assert r.returncode == 2 and "no usable images" in r.stderr, r.stderr
    assert f"{dst} was missing: a pack killed while replacing it had left the previous dataset in {old}; " \
           f"moved it back to {dst}" in r.stderr
    assert beside(dst) == ["out"]                          # the killed run's partial folder is cleaned up
    assert (dst / "manifest.json").read_bytes() == manifest and snapshot(dst) == before
    assert len(open_dataset(dst)) == 9

    r = pack_in_child(second, dst, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert len(open_dataset(dst)) == 8 and beside(dst) == ["out"]


@pytest.mark.parametrize("fault, records", [("before-first-rename", 9), ("after-second-rename", 8)])
def test_kill_at_the_other_steps_leaves_a_whole_dataset_at_dst(two_sources, tmp_path, fault, records):
    first, second, bad = two_sources
    dst = tmp_path / "out"
    quiet_pack(first, dst)
    r = pack_in_child(second, dst, "--overwrite", fault=fault)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert len(open_dataset(dst)) == records               # old (not moved yet) or new (in place)
    kept = (dst / "manifest.json").read_bytes()
    r = pack_in_child(bad, dst, "--overwrite")             # a failing run deletes nothing of DST
    assert r.returncode == 2 and "no usable images" in r.stderr, r.stderr
    assert (dst / "manifest.json").read_bytes() == kept and len(open_dataset(dst)) == records
    assert beside(dst) == ["out"]                          # what the kill left beside DST is gone
