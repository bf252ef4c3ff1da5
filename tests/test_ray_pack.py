"""``pack(engine="ray")`` / ``loader pack --engine ray`` on a real 2-node local Ray cluster
(tests/raycluster.py): the same bytes as the local engine for 1 and 2 tasks at once, on class folders,
a labels file and ``s3://`` (moto, tests/s3server.py); a killed worker retried, a task failing every
attempt, Ctrl-C on the CLI, a rerun after a failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, jpeg_bytes, write

import loader
from loader.errors import PackError

pytest_plugins = ["s3server", "raycluster"]     # s3_server, s3_env; ray_cluster, ray_connected (one a session)


def _photos(root: Path) -> Path:
    """3 classes x 4 JPEGs, a BMP (converted to JPEG), a file that is not an image: 14 files."""
    from PIL import Image

    src = root / "src"
    for label in range(3):
        for i in range(4):
            write(src / f"c{label}" / f"{i:02d}.jpg", jpeg_bytes(seed=10 * label + i, label=label))
    Image.new("RGB", (40, 30), (200, 10, 60)).save(src / "c1" / "b.bmp")
    write(src / "c2" / "bad.jpg", b"not an image")
    return src


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photos(tmp_path_factory.mktemp("ray-photos"))


@pytest.fixture(scope="module")
def local_pack(photos, tmp_path_factory) -> Path:
    """The local engine's pack of ``photos`` in 3 shards: what every Ray pack must equal."""
    dst = tmp_path_factory.mktemp("ray-local") / "local.packed"
    loader.pack(photos, dst, shards=3, workers=1, progress=False)
    return dst


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _beside(dst: Path) -> list[str]:
    """What is beside DST: partial folders of a failed pack would show here."""
    return sorted(p.name for p in dst.parent.iterdir())


@pytest.mark.parametrize("workers", [1, 2])
def test_folder_pack_is_the_local_pack_byte_for_byte(photos, local_pack, tmp_path, ray_connected, workers):  # noqa: F811
    dst = tmp_path / "ray.packed"
    report = loader.pack(photos, dst, shards=3, workers=workers, progress=False, engine="ray")
    assert _files(dst) == _files(local_pack)             # shards, columns, sources, manifest (digests), skipped.tsv
    assert (report.num_records, report.num_skipped, report.shards) == (13, 1, 3)
    assert (dst / "skipped.tsv").read_text().splitlines()[1].startswith("c2/bad.jpg\t")
    assert loader.open_dataset(dst).manifest.num_converted() == 1          # the BMP
    assert _beside(dst) == ["ray.packed"]


def test_labels_file_pack_is_the_local_pack_byte_for_byte(photos, tmp_path, ray_connected):  # noqa: F811
    labels = tmp_path / "labels.csv"
    rows = ["c2/03.jpg,dog", "c0/00.jpg,cat|dog", "c1/b.bmp,cat", "c2/bad.jpg,dog", "c1/01.jpg,bird"]
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    local = tmp_path / "local.packed"
    loader.pack(photos, local, shards=2, workers=1, progress=False, labels=labels)
    for workers in (1, 2):
        dst = tmp_path / f"ray{workers}.packed"
        report = loader.pack(photos, dst, shards=2, workers=workers, progress=False, labels=labels, engine="ray")
        assert _files(dst) == _files(local), workers
        assert report.multi_label and report.num_records == 4 and report.num_unlisted == 9


def _objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    from s3server import s3_client

    c = s3_client(endpoint)
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    return {k[len(prefix) + 1:]: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_s3_pack_is_the_local_engine_s_byte_for_byte(photos, local_pack, s3_env, s3_server, ray_connected):  # noqa: F811
    loader.pack(photos, f"s3://{s3_env}/local.packed", shards=3, workers=1, progress=False)
    local = _objects(s3_server, s3_env, "local.packed")
    assert local == _files(local_pack)
    for workers in (1, 2):
        url = f"s3://{s3_env}/ray{workers}.packed"
        report = loader.pack(photos, url, shards=3, workers=workers, progress=False, engine="ray")
        assert report.dst == url
        assert _objects(s3_server, s3_env, f"ray{workers}.packed") == local, workers
    # overwrite a live dataset: the new shards go up under names the old one does not use, as the local engine's
    loader.pack(photos, f"s3://{s3_env}/local.packed", shards=2, workers=1, progress=False, overwrite=True)
    loader.pack(photos, f"s3://{s3_env}/ray1.packed", shards=2, workers=2, progress=False, overwrite=True,
                engine="ray")
    again = _objects(s3_server, s3_env, "ray1.packed")
    assert sorted(k for k in again if k.startswith("shard-")) == ["shard-00003.lmdb", "shard-00004.lmdb"]
    assert again == _objects(s3_server, s3_env, "local.packed")


def test_strict_names_the_bad_file_and_leaves_nothing(photos, tmp_path, ray_connected):  # noqa: F811
    dst = tmp_path / "strict.packed"
    with pytest.raises(PackError, match=r"^bad image .*c2/bad\.jpg: .*strict=True stops at the first bad file"):
        loader.pack(photos, dst, shards=3, workers=2, progress=False, strict=True, engine="ray")
    assert _beside(dst) == []


def test_a_killed_worker_is_retried_and_the_output_is_the_same(photos, local_pack, tmp_path, monkeypatch,
                                                               ray_connected):  # noqa: F811
    from loader.convert import rayengine

    killed: list[str] = []
    real = rayengine._clear_markers
    monkeypatch.setattr(rayengine, "_clear_markers", lambda markers: killed.extend(real(markers)) or killed)
    monkeypatch.setenv("LOADER_FAULT", "raytask:1")
    dst = tmp_path / "retried.packed"
    loader.pack(photos, dst, shards=3, workers=2, progress=False, engine="ray")
    assert [Path(m).name.rsplit("-", 1)[1] for m in killed] == ["1"]    # shard 1's worker did die once
    assert _files(dst) == _files(local_pack)


def test_a_task_failing_every_attempt_fails_the_pack_naming_its_files(photos, local_pack, tmp_path,
                                                                      ray_connected, monkeypatch):  # noqa: F811
    from loader.convert.rayengine import MAX_RETRIES

    monkeypatch.setenv("LOADER_FAULT", "raytask-always:1")
    dst = tmp_path / "failed.packed"
    with pytest.raises(PackError) as e:
        loader.pack(photos, dst, shards=3, workers=2, progress=False, engine="ray")
    # shard 1 holds items 4..8 of the sorted 14: c1/00.jpg ... c1/b.bmp
    assert str(e.value).startswith(f"the Ray task writing shard-00001.lmdb (5 files: c1/00.jpg, c1/01.jpg, "
                                   f"c1/02.jpg and 2 more) failed on all {MAX_RETRIES + 1} attempts: ")
    assert "\n" not in str(e.value)
    assert _beside(dst) == []                      # no DST, no partial folder
    monkeypatch.delenv("LOADER_FAULT")
    loader.pack(photos, dst, shards=3, workers=2, progress=False, engine="ray")     # a rerun succeeds
    assert _files(dst) == _files(local_pack)


def test_a_failed_pack_to_s3_deletes_the_shards_its_tasks_uploaded(photos, s3_env, s3_server, monkeypatch,
                                                                   ray_connected):  # noqa: F811
    monkeypatch.setenv("LOADER_FAULT", "raytask-always:2")      # shards 0 and 1 go up first (2 in flight)
    url = f"s3://{s3_env}/failed.packed"
    with pytest.raises(PackError, match=r"^the Ray task writing shard-00002\.lmdb \(5 files: c2/00\.jpg, "):
        loader.pack(photos, url, shards=3, workers=2, progress=False, engine="ray")
    assert _objects(s3_server, s3_env, "failed.packed") == {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_cancels_the_tasks_and_leaves_nothing(photos, tmp_path, ray_cluster):  # noqa: F811
    import tempfile

    dst = tmp_path / "interrupted.packed"
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               LOADER_FAULT="raytask-hang:0")
    proc = subprocess.Popen([sys.executable, "-m", "loader", "pack", str(photos), str(dst), "--shards", "3",
                             "--workers", "1", "--engine", "ray", "--address", ray_cluster.address, "--quiet"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        marker = None
        deadline = time.monotonic() + 40
        while marker is None and time.monotonic() < deadline and proc.poll() is None:
            found = [p for p in Path(tempfile.gettempdir()).glob(f"loader-fault-{dst.name}.partial-{proc.pid}-*-0")
                     if p.read_text()]
            marker = found[0] if found else None
            time.sleep(0.2)
        assert marker is not None, proc.communicate(timeout=10)
        task_pid = int(marker.read_text())
        assert _pid_alive(task_pid) and [p.name for p in tmp_path.iterdir() if p.name != "src"][0].startswith(
            "interrupted.packed.partial-")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("interrupted")
    assert _beside(dst) == []                     # neither DST nor the partial folder
    assert not marker.exists()                    # the driver cleaned up after its tasks
    deadline = time.monotonic() + 20
    while _pid_alive(task_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pid_alive(task_pid)               # the hanging task's worker was killed


def test_engine_and_address_are_validated_before_any_work(photos, tmp_path):
    from loader.errors import ArgumentError

    with pytest.raises(ArgumentError, match=r"^engine must be 'local' or 'ray' \(got 'spark'\)$"):
        loader.pack(photos, tmp_path / "x", engine="spark")
    with pytest.raises(ArgumentError, match=r"^ray_address is for engine='ray'"):
        loader.pack(photos, tmp_path / "x", ray_address="127.0.0.1:6379")
    assert list(tmp_path.iterdir()) == []


def test_missing_ray_is_one_line_naming_the_extra(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)      # `import ray` raises ModuleNotFoundError(name="ray")
    with pytest.raises(PackError, match=r"^engine='ray' needs Ray, which is not installed: pip install "
                                        r"'loader\[ray\]'$"):
        loader.pack(photos, tmp_path / "x", engine="ray", progress=False)
    assert not (tmp_path / "x").exists()


def test_an_address_where_no_cluster_answers_is_one_line_at_once(photos, tmp_path):
    """Unprobed, ray.init retried a dead address for minutes; now a TCP probe answers in one line."""
    import socket

    with socket.socket() as s:          # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    r = subprocess.run([sys.executable, "-m", "loader", "pack", str(photos), str(tmp_path / "out"), "--engine",
                        "ray", "--address", f"127.0.0.1:{port}", "--quiet"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"error: no Ray cluster answers at 127.0.0.1:{port} ([Errno 111] Connection refused): "
                                f"start one there (`ray start --head`), or leave out the address to start one here")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
