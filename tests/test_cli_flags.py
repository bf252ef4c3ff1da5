"""The command line behaves the same everywhere: one meaning per flag, old spellings hidden, parameters as flags."""

from __future__ import annotations

import argparse
import inspect

import pytest

from loader import cli
from loader.cli.flags import NOT_DEST, RENAMED, SHARED, command_parsers, name_flags, param_flags, sweep_metavar

PARSERS = command_parsers(cli.build_parser())


def visible_options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """flag -> action, for the flags ``--help`` shows (long spellings)."""
    return {s: a for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings
            if s.startswith("--") and s != "--help"}


def test_every_command_is_parsed():
    assert sorted(PARSERS) == ["advise", "bench", "doctor", "info", "pack", "show", "verify"]


def test_a_flag_of_two_commands_has_one_meaning_the_table_s():
    seen: dict[str, list[str]] = {}
    for command, p in PARSERS.items():
        for flag, action in visible_options(p).items():
            seen.setdefault(flag, []).append(command)
            if flag not in SHARED:
                continue
            f = SHARED[flag]
            assert action.help.startswith(f.meaning), (command, flag, action.help)
            if f.metavar is None:
                assert action.nargs == 0, (command, flag)
            else:
                assert action.metavar in (f.metavar, sweep_metavar(f.metavar)), (command, flag, action.metavar)
                # A list flag says so in its help; a one-value flag does not.
                sweeps = action.metavar == sweep_metavar(f.metavar)
                assert ("comma-separated list to sweep" in action.help) == sweeps, (command, flag)
    shared_by_several = {flag for flag, commands in seen.items() if len(commands) > 1}
    assert shared_by_several <= set(SHARED), shared_by_several - set(SHARED)
    assert set(SHARED) <= set(seen)            # no stale row in the table
    assert sorted(seen["--json"]) == ["advise", "bench", "doctor", "info", "show"]
    assert sorted(seen["--image-size"]) == sorted(seen["--batch-size"]) == ["advise", "bench", "doctor", "show"]
    assert seen["--workers"] == ["pack"]       # bench's DataLoader workers have their own name
    assert seen["--repeats"] == ["advise"]     # bench's round-robin measurements are --rounds, as advise's


def test_every_json_flag_takes_a_file_and_dash_is_stdout():
    for command, p in PARSERS.items():
        action = visible_options(p).get("--json")
        if action is not None:
            assert action.metavar == "FILE" and "'-' = stdout" in action.help, command


def test_sweeps_take_lists_and_doctor_takes_one_size():
    assert visible_options(PARSERS["bench"])["--image-size"].metavar == "PX[,PX...]"
    assert visible_options(PARSERS["advise"])["--batch-size"].metavar == "N[,N...]"
    assert visible_options(PARSERS["doctor"])["--image-size"].metavar == "PX"
    assert visible_options(PARSERS["doctor"])["--image-size"].type is int


@pytest.mark.parametrize("command, old, new", [(c, o, n) for (c, o), n in RENAMED.items()])
def test_old_spellings_are_hidden_aliases_with_a_note(command, old, new, capsys):
    p = PARSERS[command]
    alias, target = p._option_string_actions[old], p._option_string_actions[new]
    assert alias.help == argparse.SUPPRESS and alias.dest == target.dest and alias.type is target.type
    assert old not in p.format_help() and new in p.format_help()
    positional = ["X"] + (["--model", "m:f"] if command == "advise" else [])
    value = "3"
    via_old = p.parse_args([*positional, old, value])
    assert capsys.readouterr().err == f"note: {old} is deprecated and will be removed in loader 0.5; use {new}\n"
    via_new = p.parse_args([*positional, new, value])
    assert capsys.readouterr().err == ""
    assert getattr(via_old, target.dest) == getattr(via_new, target.dest)


def test_renamed_flags_still_reach_the_settings(monkeypatch, capsys):
    import loader.bench as lb
    from loader.bench import BenchRow

    seen = {}

    def fake_bench(src, settings, **kw):
        seen["settings"] = settings
        return [BenchRow("loader", 8, 64, 1.0, device="cpu")]

    monkeypatch.setattr(lb, "bench", fake_bench)
    assert cli.main(["bench", "SRC", "--batch-sizes", "8,16", "--image-sizes", "64", "--workers", "0",
                     "--quiet"]) == 0
    s = seen["settings"]
    assert (s.batch_sizes, s.image_sizes, s.workers) == ((8, 16), (64,), 0)
    err = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in err] == ["--batch-sizes", "--image-sizes", "--workers"]


# ------------------------------------------------------------------ parameter -> flag, in one place


def test_the_parameter_flag_map_is_read_off_the_parsers():
    pack, bench, advise, doctor = (param_flags(PARSERS[c]) for c in ("pack", "bench", "advise", "doctor"))
    assert {k: pack[k] for k in ("src", "dst", "shard_size_mb", "classes_from", "progress")} == {
        "src": "SRC", "dst": "DST", "shard_size_mb": "--shard-size-mb", "classes_from": "--classes-from",
        "progress": "--quiet"}
    assert {k: bench[k] for k in ("workers", "image_sizes", "batch_sizes", "memory_budget_mb", "train")} == {
        "workers": "--dataloader-workers", "image_sizes": "--image-size", "batch_sizes": "--batch-size",
        "memory_budget_mb": "--memory-budget", "train": "--eval"}
    assert (advise["trial_images"], advise["image_sizes"], doctor["max_batches"]) == ("--trial", "--image-size",
                                                                                       "--batches")
    assert param_flags(PARSERS["verify"])["decode"] == "--no-decode"
    assert set(NOT_DEST.values()) <= {f for p in PARSERS.values() for f in visible_options(p)}


def command_params(command: str) -> set[str]:
    """The library parameters a command sets: its function's, or its settings' fields."""
    import loader
    from loader.advisor import AdviseSettings
    from loader.bench import BenchSettings
    from loader.check.doctor import run_doctor

    return {
        "pack": lambda: set(inspect.signature(loader.pack).parameters),
        "bench": lambda: set(BenchSettings.__dataclass_fields__) | {"src", "packed"},
        "advise": lambda: set(AdviseSettings.__dataclass_fields__) | {"dst", "model"},
        "doctor": lambda: set(inspect.signature(run_doctor).parameters),
    }[command]()


# Parameters only the Python API sets (the CLI uses their defaults).
@pytest.mark.parametrize("command, api_only", [("pack", set()), ("bench", {"settle"}), ("advise", {"tolerance"}),
                                               ("doctor", {"timeout"})])
def test_every_parameter_a_command_sets_has_a_flag(command, api_only):
    """A library message about any of these parameters reaches a CLI user as the flag."""
    flags = param_flags(PARSERS[command])
    missing = command_params(command) - api_only - set(flags)
    assert not missing, missing


@pytest.mark.parametrize("message, param, expected", [
    ("shard_size_mb must be > 0, got -1", "shard_size_mb", "--shard-size-mb must be > 0, got -1"),
    ("batch_sizes: 64 is larger than the dataset; lower batch_sizes", "batch_sizes",
     "--batch-size: 64 is larger than the dataset; lower --batch-size"),
    ("`shards` and `shard_size_mb` go together", None, "--shards and --shard-size-mb go together"),
    ("workers must be >= 0; 9 workers asked", "workers", "--dataloader-workers must be >= 0; 9 workers asked"),
    ("seed must be an int", "seed", "--seed must be an int"),
    ("timeout must be > 0", "timeout", "timeout must be > 0"),           # no flag: the message stays
    ("--quality must be 1..100", "quality", "--quality must be 1..100"),   # already a flag: untouched
    ("image_sizes_x and my_image_sizes", "image_sizes", "image_sizes_x and my_image_sizes"),   # other names
])
def test_name_flags(message, param, expected):
    flags = {"shard_size_mb": "--shard-size-mb", "shards": "--shards", "batch_sizes": "--batch-size",
             "workers": "--dataloader-workers", "seed": "--seed", "quality": "--quality",
             "image_sizes": "--image-size"}
    assert name_flags(message, param, flags) == expected


def test_a_library_error_naming_a_parameter_reaches_the_user_as_the_flag(monkeypatch, capsys, tmp_path):
    import loader.convert.packing
    from loader.errors import ArgumentError

    def bad(*a, **k):
        raise ArgumentError("shard_size_mb must be a number > 0,\n  got -1", param="shard_size_mb")

    monkeypatch.setattr(loader.convert.packing, "pack", bad)
    assert cli.main(["pack", str(tmp_path), str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: --shard-size-mb must be a number > 0, got -1\n"


def test_the_docs_and_scripts_use_the_current_spellings():
    """An old spelling still works, with a note; the docs must not teach it."""
    import re

    from tests.conftest import REPO

    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "scripts").glob("*.sh")),
             REPO / "loader" / "bench" / "__init__.py"]
    current = {f for p in PARSERS.values() for f in visible_options(p)}
    stale = []
    for (command, old), new in RENAMED.items():
        anywhere = re.compile(rf"{re.escape(old)}(?![\w-])")
        # A spelling another command still has (pack --workers) is stale only in a `loader COMMAND` line.
        in_command = re.compile(rf"loader {command}\b(?:(?!\. |`).)*{re.escape(old)}(?![\w-])")
        pattern = anywhere if old not in current else in_command
        for path in files:
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    stale.append(f"{path.relative_to(REPO)}:{n}: {old} -> {new}")
    for path in files:                     # `loader info DST --json` without FILE: the deprecated form
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"loader\"? info .*--json( *[|#)]|$)", line):
                stale.append(f"{path.relative_to(REPO)}:{n}: info --json -> --json -")
    assert not stale, stale
