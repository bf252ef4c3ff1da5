import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import loader
from loader import cli, open_dataset, pack
from loader.check.verify import verify
from loader.format.manifest import record_checksum
from tests.conftest import edit_columns

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def packed(image_tree, tmp_path):
    dst = tmp_path / "packed"
    pack(image_tree, dst, workers=1, progress=False)
    return dst


def run_main(capsys, *args):
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(err: str, expected: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


# ------------------------------------------------------------------ pack


def test_pack_prints_summary_and_skipped_path(image_tree, tmp_path, loader_cli):
    (image_tree / "a_bird" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    r = loader_cli("pack", str(image_tree), str(tmp_path / "out"), "--workers", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"packed 9 images (1 skipped) into {tmp_path / 'out'}: 3 classes, 1 shard")
    assert lines[1] == f"skipped files and reasons: {tmp_path / 'out' / 'skipped.tsv'}"
    assert r.stderr == ""  # --quiet: no progress bar
    assert len(open_dataset(tmp_path / "out")) == 9


def test_pack_options_reach_pack(image_tree, tmp_path, capsys):
    rc, out, _ = run_main(capsys, "pack", str(image_tree), str(tmp_path / "out"), "--shards", "2",
                          "--max-side", "32", "--quality", "80", "--workers", "1", "--strict", "--quiet")
    assert rc == 0 and "2 shards" in out
    params = open_dataset(tmp_path / "out").manifest.pack_params
    assert {k: params[k] for k in ("shards", "max_side", "quality", "strict")} == {
        "shards": 2, "max_side": 32, "quality": 80, "strict": True}
    rc, out, _ = run_main(capsys, "pack", str(image_tree), str(tmp_path / "out2"), "--shard-size-mb",
                          "0.001", "--quiet", "--workers", "1")
    assert rc == 0 and "9 shards" in out


def error_cases(tmp_path, image_tree):
    (tmp_path / "noclasses").mkdir()
    (tmp_path / "noclasses" / "x.jpg").write_bytes(b"x")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    (tmp_path / "exists").mkdir()
    (tmp_path / "afile").write_text("")
    src = str(image_tree)
    return [
        (["pack", str(tmp_path / "missing"), str(tmp_path / "o1")], "does not exist"),
        (["pack", str(tmp_path / "noclasses"), str(tmp_path / "o2")], "has no class folders"),
        (["pack", str(tmp_path / "empty"), str(tmp_path / "o3")], "no files in them"),
        (["pack", src, str(tmp_path / "exists")], "exists; pass --overwrite to replace it"),
        (["pack", src, str(tmp_path / "afile" / "out")], "choose a DST in a writable folder"),
        (["pack", src, str(tmp_path / "o4"), "--quality", "0"], "--quality must be "),
        (["pack", src, str(tmp_path / "o5"), "--shards", "0"], "--shards must be "),   # the parameter, as its flag
        (["info", str(tmp_path / "exists")], "not a packed dataset"),
        (["verify", str(tmp_path / "nothing")], "not a packed dataset"),
    ]


def test_user_errors_via_subprocess(image_tree, tmp_path, loader_cli):
    for args, expected in error_cases(tmp_path, image_tree):
        r = loader_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert_one_line_error(r.stderr, expected)
        assert r.stdout == ""
    for name in ("o1", "o2", "o3", "o4", "o5"):
        assert not (tmp_path / name).exists()
    assert not list(tmp_path.glob("*.partial-*"))


def test_user_errors_via_main(image_tree, tmp_path, capsys):
    for args, expected in error_cases(tmp_path, image_tree):
        rc, out, err = run_main(capsys, *args)
        assert rc == 2 and out == "", args
        assert_one_line_error(err, expected)


def test_usage_errors_exit_2(capsys):
    for args in (["pack"], ["pack", "a", "b", "--quality", "high"], ["nope"], [],
                 ["pack", "a", "b", "--shards", "2", "--shard-size-mb", "5"]):
        rc, _, err = run_main(capsys, *args)
        assert rc == 2 and "usage: loader" in err and "Traceback" not in err, args


def test_keyboard_interrupt_exits_130(image_tree, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    import loader.convert.packing

    monkeypatch.setattr(loader.convert.packing, "pack", interrupted)
    rc, _, err = run_main(capsys, "pack", str(image_tree), str(tmp_path / "o"))
    assert rc == 130 and err == "interrupted\n"


def test_version_and_help(capsys, loader_cli):
    rc, out, _ = run_main(capsys, "--version")
    assert rc == 0 and out == f"loader {loader.__version__}\n"
    rc, out, _ = run_main(capsys, "pack", "--help")
    assert rc == 0
    for flag in ("--shards", "--shard-size-mb", "--workers", "--max-side", "--quality",
                 "--overwrite", "--strict", "--quiet", "SRC", "DST", "skipped.tsv"):
        assert flag in out, flag
    rc, out, _ = run_main(capsys, "info", "--help")
    assert rc == 0 and "--json" in out
    rc, out, _ = run_main(capsys, "verify", "--help")
    assert rc == 0 and "exit status 1" in out
    r = loader_cli("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("pack", "info", "verify", "bench"))


def test_storage_policy_is_stated_once_in_pack_help(capsys):
    from loader.convert.imagecheck import STORAGE_POLICY

    rc, out, _ = run_main(capsys, "pack", "--help")
    assert rc == 0 and STORAGE_POLICY in out            # verbatim, not re-worded
    # The README and the docs point to it rather than carrying a second copy.
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "16-bit images (PNG," not in text and "(>> 8)" not in text, doc


# ------------------------------------------------------------------ info


def test_info_json(packed, capsys):
    rc, out, err = run_main(capsys, "info", str(packed), "--json", "-")
    assert rc == 0
    info = json.loads(out)                                   # stdout: the JSON alone
    assert err.splitlines()[0] == f"dataset   {packed}"      # the text report: stderr
    assert info["num_records"] == 9 and info["num_skipped"] == 0 and info["num_converted"] == 0
    assert info["format"] == "loader.lmdb-shards" and info["version"] == 4
    assert (info["label_source"], info["multi_label"], info["num_unlisted"]) == ("folders", False, 0)
    assert info["path"] == str(packed)
    assert info["classes"] == [{"label": 0, "name": "a_bird", "count": 3},
                               {"label": 1, "name": "b_dog", "count": 3},
                               {"label": 2, "name": "c_cat", "count": 3}]
    (shard,) = info["shards"]
    assert {k: shard[k] for k in ("name", "first", "records", "values")} == {
        "name": "shard-00000.lmdb", "first": 0, "records": 9, "values": 1}   # one block of 2 KB records
    assert info["index_bytes"] == sum(p.stat().st_size for p in packed.iterdir() if p.suffix != ".lmdb")
    assert shard["bytes"] == sum(len(open_dataset(packed).read(i)) for i in range(9))
    assert shard["file_bytes"] == (packed / "shard-00000.lmdb").stat().st_size
    assert info["pack_params"]["quality"] == 95 and "workers" not in info["pack_params"]


def test_info_text(packed, capsys):
    rc, out, _ = run_main(capsys, "info", str(packed))
    assert rc == 0
    lines = out.splitlines()
    assert lines[:4] == [f"dataset   {packed}", "records   9 (converted at pack time: 0, skipped files: 0)",
                         "labels    class folders, single-label", "classes   3"]
    assert [line.split() for line in lines[4:7]] == [["0", "a_bird", "3"], ["1", "b_dog", "3"], ["2", "c_cat", "3"]]
    assert lines[7] == "shards    1" and lines[8].startswith("  shard-00000.lmdb  9 records from #0, ")
    assert lines[9].startswith("index     0.0 MB (manifest version 4)")
    assert lines[10].startswith("packed    shards=None shard_size_mb=512 max_side=None quality=95 strict=False")


def test_info_json_file_and_the_deprecated_bare_flag(packed, capsys, tmp_path):
    rc, out, err = run_main(capsys, "info", str(packed), "--json", str(tmp_path / "i.json"))
    assert rc == 0 and err == "" and out.splitlines()[0] == f"dataset   {packed}"
    written = json.loads((tmp_path / "i.json").read_text())
    assert written == cli.dataset_info(str(packed))
    rc, out, err = run_main(capsys, "info", str(packed), "--json")       # loader 0.3's spelling: stdout
    assert rc == 0 and json.loads(out) == written
    assert err.splitlines()[0] == ("note: --json without FILE is deprecated and will need one from loader 0.5; "
                                   "use --json - for stdout")


@pytest.mark.parametrize("command", ["info", "bench", "advise", "doctor"])
def test_an_output_file_in_a_missing_folder_is_one_error_line_before_any_work(command, packed, tmp_path, capsys,
                                                                              monkeypatch):
    import loader.advisor
    import loader.bench
    import loader.check.doctor

    def must_not_run(*a, **k):
        raise AssertionError("ran before the output folder was checked")

    for module, name in ((loader.bench, "bench"), (loader.advisor, "advise"), (loader.check.doctor, "run_doctor"),
                         (cli.data, "dataset_info")):
        monkeypatch.setattr(module, name, must_not_run)
    extra = ["--model", "m:f"] if command == "advise" else []
    target = tmp_path / "nope" / "out.json"
    rc, out, err = run_main(capsys, command, str(packed), *extra, "--json", str(target))
    assert rc == 2 and out == ""
    assert err == f"error: --json {target}: cannot write there, folder {target.parent} does not exist\n"
    if command in ("bench", "advise"):
        rc, _, err = run_main(capsys, command, str(packed), *extra, "--plot", "-")
        assert rc == 2 and err == "error: --plot needs a file name, got '-' (only --json can write to stdout)\n"


def test_bench_json_to_stdout_puts_the_table_on_stderr(monkeypatch, capsys):
    import loader.bench as lb
    from loader.bench import BenchRow

    monkeypatch.setattr(lb, "bench", lambda *a, **k: [BenchRow("loader", 16, 96, 100.0, device="cpu")])
    rc, out, err = run_main(capsys, "bench", "SRC", "--json", "-", "--quiet")
    assert rc == 0 and [r["images_per_sec"] for r in json.loads(out)] == [100.0]
    assert "recommendation: loader at 96 px: use batch size 16" in err


def test_non_utf8_names_print_escaped_on_a_strict_utf8_stdout(tmp_path):
    """A class folder and a file whose names are not UTF-8: info and verify print them as \\x escapes."""
    from tests.conftest import jpeg_bytes

    src = os.fsencode(tmp_path / "src")
    for folder, name, seed in ((b"caf\xe9", b"a.jpg", 0), (b"dog", b"\xff.jpg", 1), (b"dog", b"b.jpg", 2)):
        os.makedirs(os.path.join(src, folder), exist_ok=True)
        with open(os.path.join(src, folder, name), "wb") as f:
            f.write(jpeg_bytes(seed=seed, size=(40, 30)))
    dst = tmp_path / "packed"
    pack(os.fsdecode(src), dst, workers=1, progress=False)
    sources = [open_dataset(dst).source(i) for i in range(3)]
    bad = sources.index("dog/\udcff.jpg")

    def flip(crc):                         # a wrong checksum: verify prints the record's source name
        crc[bad] ^= 1
        return crc

    edit_columns(dst, checksums=flip)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    run = [sys.executable, "-m", "loader"]
    info = subprocess.run([*run, "info", str(dst)], capture_output=True, cwd=REPO, env=env, timeout=120, check=False)
    assert info.returncode == 0 and b"Traceback" not in info.stderr, info.stderr
    assert b"  caf\\udce9  1" in info.stdout
    ver = subprocess.run([*run, "verify", str(dst), "--no-decode", "--quiet"], capture_output=True, cwd=REPO, env=env,
                         timeout=120, check=False)
    assert ver.returncode == 1 and b"Traceback" not in ver.stderr, ver.stderr
    assert ver.stdout.splitlines()[0].startswith(f"record {bad} (".encode())
    assert b"source dog/\\udcff.jpg): checksum mismatch" in ver.stdout
    # The host's streams are left as they were: main() restores the error handler.
    code = "import sys; from loader.cli import main; main(['info', sys.argv[1]]); print(sys.stdout.errors)"
    host = subprocess.run([sys.executable, "-c", code, str(dst)], capture_output=True, cwd=REPO, env=env, timeout=120,
                          check=False)
    assert host.returncode == 0 and host.stdout.splitlines()[-1] == b"strict", host.stderr


# ------------------------------------------------------------------ verify


def overwrite_in_shard(shard_file, old: bytes, new: bytes) -> None:
    """Replace a record's bytes in place inside the LMDB file."""
    blob = shard_file.read_bytes()
    pos = blob.find(old)
    assert pos > 0 and blob.find(old, pos + 1) == -1 and len(new) == len(old)
    with open(shard_file, "r+b") as f:
        f.seek(pos)
        f.write(new)


def test_verify_clean_dataset(packed, loader_cli):
    r = loader_cli("verify", str(packed), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"verified 9 records in {packed}: 0 bad (all good)\n"


def test_verify_finds_flipped_byte(packed, capsys):
    ds = open_dataset(packed)
    record = ds.read(4)
    ds.close()
    middle = len(record) // 2
    flipped = bytearray(record[middle:middle + 64])
    flipped[10] ^= 0xFF
    overwrite_in_shard(packed / "shard-00000.lmdb", record[middle:middle + 64], bytes(flipped))
    rc, out, _ = run_main(capsys, "verify", str(packed), "--quiet")
    assert rc == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("record 4 (shard-00000.lmdb key 0000000000, source b_dog/img_0.jpg): "
                               "checksum mismatch")
    assert lines[1] == f"verified 9 records in {packed}: 1 bad"


def test_verify_reports_undecodable_and_wrong_size(packed, loader_cli):
    ds = open_dataset(packed)
    bad_record = ds.read(2)
    ds.close()
    garbage = b"\x00" * 16 + bad_record[16:]  # no JPEG header any more: DALI must fail
    overwrite_in_shard(packed / "shard-00000.lmdb", bad_record, garbage)

    def bless(crc):                       # checksum fine: only decoding can tell
        crc[2] = int(record_checksum(garbage), 16)
        return crc

    def one_more(h):
        h[7] += 1
        return h

    edit_columns(packed, checksums=bless, heights=one_more)
    # DALI meets undecodable bytes here: in a child process, so a crash is a failed return code.
    proc = loader_cli("verify", str(packed), "--quiet")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    assert lines[0].startswith("record 2 (shard-00000.lmdb key 0000000000, source a_bird/img_2.jpg): "
                               "DALI cannot decode it")
    assert lines[1] == ("record 7 (shard-00000.lmdb key 0000000000, source c_cat/img_1.jpg): "
                        "decodes to 48x64 but the manifest says 49x64 (height x width)")
    assert lines[2] == f"verified 9 records in {packed}: 2 bad"
    assert verify(packed, decode=False, progress=False) == []  # checksums alone are fine


# ------------------------------------------------------------------ bench: argparse -> BenchSettings


def test_bench_options_reach_bench_settings_once(monkeypatch, capsys, tmp_path):
    import loader.bench as lb
    from loader.bench import BenchRow, BenchSettings

    seen = {}

    def fake_bench(src, settings, *, packed, progress, notes):
        seen.update(src=src, settings=settings, packed=packed, progress=progress)
        return [BenchRow("loader", 16, 96, 100.0, device="cpu")]

    monkeypatch.setattr(lb, "bench", fake_bench)
    rc, out, _ = run_main(capsys, "bench", "SRC", "--batch-size", "16,8,16", "--image-size", "96",
                          "--dataloader-workers", "0", "--threads", "3", "--rounds", "2", "--warmup", "0",
                          "--batches", "4", "--eval", "--pipelines", "loader, decode-limit", "--device", "cpu",
                          "--prefetch", "1", "--seed", "5", "--memory-budget", "50", "--quiet",
                          "--json", str(tmp_path / "r.json"))
    assert rc == 0, out
    assert seen["src"] == "SRC" and seen["packed"] is None and seen["progress"] is False
    assert seen["settings"] == BenchSettings(
        batch_sizes=(16, 8), image_sizes=(96,), workers=0, threads=3, repeats=2, warmup=0, batches=4,
        seconds=None, train=False, device="cpu", prefetch=1, seed=5, pipelines=("loader", "decode-limit"),
        memory_budget_mb=50.0)
    assert json.loads((tmp_path / "r.json").read_text())[0]["images_per_sec"] == 100.0
    assert "recommendation: loader at 96 px: use batch size 16" in out


@pytest.mark.parametrize("argv, flag, got", [
    (["--dataloader-workers", "-1"], "--dataloader-workers", "-1"),
    (["--workers", "-1"], "--workers", "-1"),          # the old spelling: the message names what was typed
    (["--threads", "0"], "--threads", "0"),
    (["--seconds", "0"], "--seconds", "0.0"),
    (["--memory-budget", "-5"], "--memory-budget", "-5.0"),
    (["--batch-size", "8,x"], "--batch-size", "'8,x'"),
    (["--image-size", "4"], "--image-size", "(4,)"),
])
def test_bench_option_values_are_checked_by_bench_settings_and_name_the_flag(capsys, argv, flag, got):
    """BenchSettings names the parameter (workers, memory_budget_mb); the CLI shows the flag."""
    rc, _, err = run_main(capsys, "bench", "SRC", *argv)
    last = err.splitlines()[-1]
    assert rc == 2 and last.startswith(f"error: {flag} must be ") and last.endswith(f"got {got}"), err
    assert err.count("error:") == 1 and "_" not in last.split(" must ")[0]


def test_pack_and_info_do_not_import_torch_or_dali(packed):
    code = ("import sys; from loader.cli import main; rc = main(['info', sys.argv[1]]); "
            "print(rc, 'torch' in sys.modules, any(m.startswith('nvidia') for m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(packed)], capture_output=True, text=True,
                          cwd=REPO, check=False, timeout=60)
    assert proc.stdout.splitlines()[-1] == "0 False False", proc.stderr
