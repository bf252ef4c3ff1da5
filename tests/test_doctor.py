"""`loader doctor`: the environment report, the CPU self-check for real, failures as one line each."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch

import loader
from loader.check.doctor import NO_CUDA, Check, DoctorReport, run_doctor
from tests.conftest import pack_small_images


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    return pack_small_images(tmp_path_factory.mktemp("doctor"), classes=3, per_class=6, base=(40, 30))


def zero_record_header(src, dst, victim: int):
    """A copy of ``src`` whose record ``victim`` lost its first 64 bytes in the shard."""
    shutil.copytree(src, dst)
    ds = loader.open_dataset(dst)
    data = ds.read(victim)
    shard, _ = ds.locate(victim)
    ds.close()
    blob = (dst / shard).read_bytes()
    at = blob.find(data)
    assert at >= 0 and blob.find(data, at + 1) == -1
    (dst / shard).write_bytes(blob[:at] + b"\0" * 64 + blob[at + 64:])
    return dst


def test_run_doctor_checks_the_cpu_path_and_says_the_gpu_was_not_checked(small_ds):
    report = run_doctor(small_ds, batch_size=4, image_size=32)
    assert isinstance(report, DoctorReport) and report.ok and not report.failures
    by_name = {c.name: c for c in report.checks}
    assert by_name["dataset"].status == "ok" and "18 records" in by_name["dataset"].detail
    cpu = by_name["cpu path"]
    assert cpu.status == "ok", cpu
    assert "18 images in batches of 4 at 32 px match the manifest" in cpu.detail and "images/s" in cpu.detail
    env = report.environment
    assert env.dali is not None and env.torch == torch.__version__
    if torch.cuda.is_available():
        assert by_name["gpu path"].status == "ok", by_name["gpu path"]
    else:
        assert by_name["gpu path"] == Check("gpu path", "not checked", NO_CUDA) or \
            by_name["gpu path"].detail.startswith(NO_CUDA + "; a GPU is present")
        assert env.hw_jpeg_decoder == f"not checked: {NO_CUDA}" and not env.cuda_available
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.dataset = "elsewhere"
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the GPU path is checked instead")
def test_cli_exits_0_says_gpu_not_checked_and_writes_json(small_ds, loader_cli, tmp_path):
    out = tmp_path / "doctor.json"
    r = loader_cli("doctor", str(small_ds), "--batch-size", "4", "--image-size", "32", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"not checked: gpu path: {NO_CUDA}" in r.stdout
    assert "HW JPEG decoder not checked: no CUDA device" in r.stdout
    assert "FAILED" not in r.stdout and r.stdout.splitlines()[-1].startswith("ok: every check that ran holds")
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["dataset"] == str(small_ds)
    assert [c["name"] for c in data["checks"]] == ["dataset", "cpu path", "gpu path"]
    assert set(data["environment"]) >= {"python", "torch", "torch_cuda", "cuda_available", "gpus", "driver", "dali",
                                        "nvimgcodec", "nvjpeg", "hw_jpeg_decoder"}


def test_cli_without_a_dataset_reports_the_environment_only(loader_cli):
    r = loader_cli("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not checked: cpu path: no packed dataset given" in r.stdout
    assert "DALI" in r.stdout and "nvImageCodec" in r.stdout


def test_a_damaged_record_is_one_failed_line_and_exit_1(small_ds, loader_cli, tmp_path):
    copy = zero_record_header(small_ds, tmp_path / "copy", victim=4)
    r = loader_cli("doctor", str(copy), "--batch-size", "4", "--image-size", "32")
    assert r.returncode == 1, r.stdout + r.stderr
    failed = [line.strip() for line in r.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and failed[1].startswith("1 check(s) FAILED"), r.stdout
    assert failed[0].startswith("FAILED: cpu path: DecodeError: record 4 (shard "), failed
    assert "its stored bytes do not match the manifest" in failed[0]


def test_a_damaged_manifest_is_one_failed_line_and_exit_1(small_ds, loader_cli, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_ds, copy)
    (copy / "manifest.json").write_text('{"format": "loader-packed", "version": 1, "truncated')
    r = loader_cli("doctor", str(copy))
    assert r.returncode == 1, r.stdout + r.stderr
    failed = [line.strip() for line in r.stdout.splitlines() if line.strip().startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED: dataset: "), r.stdout
    assert "cpu path" not in r.stdout.split("checks on")[1].split("FAILED")[0]   # nothing ran on a bad dataset


def test_a_child_killed_by_a_signal_is_reported_not_fatal(small_ds, monkeypatch):
    import loader.check.doctor as doctor

    def segfaulting_child(cmd, **kw):
        if "-c" in cmd and "_child_main" in cmd[cmd.index("-c") + 1]:
            return subprocess.CompletedProcess(cmd, -11, stdout="", stderr="Segmentation fault\n")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(doctor.subprocess, "run", segfaulting_child)
    report = run_doctor(small_ds, batch_size=4, image_size=32)
    assert not report.ok
    (cpu,) = [c for c in report.failures]
    assert cpu.name == "cpu path"
    assert cpu.detail == ("the loader's process died (killed by SIGSEGV): Segmentation fault; "
                          f"run `loader verify {small_ds}`")


@pytest.mark.parametrize("kwargs, param, match", [
    ({"batch_size": 0}, "batch_size", "batch_size must be an int >= 1"),
    ({"image_size": 4}, "image_size", "image_size must be an int >= 8"),
    ({"max_batches": True}, "max_batches", "max_batches must be an int >= 1"),
    ({"timeout": 0}, "timeout", "timeout must be > 0"),
])
def test_run_doctor_validates_its_arguments(kwargs, param, match):
    with pytest.raises(loader.ArgumentError, match=match) as info:
        run_doctor(None, **kwargs)
    assert info.value.param == param and isinstance(info.value, ValueError)


@pytest.mark.parametrize("argv, line", [
    (["--batch-size", "0"], "error: --batch-size must be an int >= 1, got 0"),
    (["--image-size", "4"], "error: --image-size must be an int >= 8, got 4"),
    (["--batches", "0"], "error: --batches must be an int >= 1, got 0"),   # run_doctor's max_batches
])
def test_cli_bad_option_is_one_error_line_naming_the_flag(loader_cli, argv, line):
    r = loader_cli("doctor", *argv)
    assert r.returncode == 2 and r.stderr.strip() == line, r.stderr


def test_the_environment_is_listed_without_dali():
    """The wheel names live in loader.units: doctor lists nvImageCodec's version with DALI unimportable."""
    code = ("import sys; sys.modules['nvidia'] = None\n"
            "from loader.check.doctor import environment\n"
            "from loader.units import NVIMGCODEC_WHEELS, dist_version\n"
            "e = environment()\n"
            "assert e.nvimgcodec == dist_version(*NVIMGCODEC_WHEELS), e\n"
            "print(e.gpu_decode_auto, [m for m in sys.modules if m.startswith('nvidia.')])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.split("\n")[0] == "None []", r.stderr


@pytest.mark.parametrize("kind", ["multi", "unlabeled"])
def test_doctor_checks_the_targets_of_multi_label_and_unlabeled_packs(tmp_path, kind):
    """The CPU path's targets must be the manifest's: multi-hot rows, or the record indices."""
    import loader
    from tests.conftest import jpeg_bytes, write

    src = tmp_path / "src"
    rows = []
    for i in range(10):
        write(src / f"{i}.jpg", jpeg_bytes(seed=i, size=(40 + i, 30)))
        rows.append(json.dumps({"path": f"{i}.jpg", "label": ["a", "b", "c"][: 1 + i % 3]}))
    (tmp_path / "l.jsonl").write_text("\n".join(rows) + "\n")
    kw = dict(labels=tmp_path / "l.jsonl") if kind == "multi" else dict(unlabeled=True)
    loader.pack(src, tmp_path / "packed", workers=1, progress=False, **kw)
    report = run_doctor(tmp_path / "packed", batch_size=4, image_size=32)
    cpu = {c.name: c for c in report.checks}["cpu path"]
    assert cpu.status == "ok", cpu
    assert "10 images in batches of 4 at 32 px match the manifest" in cpu.detail
