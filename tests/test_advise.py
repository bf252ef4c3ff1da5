"""``loader advise``: the JSON schema, figures from real counts and timers, oom / over-budget rows, trial, bad specs.

CPU only: a 60-record packed dataset of 40x32 px images, 16 px crops and
models of a few hundred parameters, so each run takes seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from loader.advisor import AdviseInterrupted, AdviseSettings, ModelSpecError, advise
from loader.advisor.modelspec import load_factory
from loader.advisor.training import seeded, state_digest
from loader.advisor.trial import trial_budget
from loader.errors import ArgumentError, LoaderError
from loader.load.sampler import split_indices
from loader.measure import batch_bytes
from loader.units import MB
from tests.conftest import REPO, pack_small_images

FAST = dict(image_sizes=(16,), steps=2, warmup=1, repeats=2, rounds=1, threads=1, device="cpu")
CLASSES, PER_CLASS = 3, 20          # 60 records: 48 training, 12 validation at validation_split 0.2

# The models the CLI imports (written next to the dataset, found through PYTHONPATH).
MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    def tiny(num_classes):
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, num_classes))

    class OomAbove(nn.Module):
        """Behaves like a GPU that holds at most 8 images: a larger batch raises CUDA's OutOfMemoryError."""
        def __init__(self, num_classes, limit=8):
            super().__init__()
            self.net, self.limit = tiny(num_classes), limit
        def forward(self, x):
            if x.shape[0] > self.limit:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: tried a batch of {x.shape[0]}")
            return self.net(x)

    def not_a_module(num_classes):
        return 42

    def wrong_shape(num_classes):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))

    def no_classes():   # takes no num_classes: called without it
        return tiny(5)

    not_callable = 3
''')


class Recording(nn.Module):
    """A tiny model that records a digest of its weights at its first training-mode forward pass."""

    seen: list[str] = []

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
        self.started = False

    def forward(self, x):
        if self.training and not self.started:
            self.started = True
            Recording.seen.append(state_digest(self))
        return self.net(x)


def tiny(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("advise")
    dst = pack_small_images(root, CLASSES, PER_CLASS, (40, 32))
    (root / "advise_models.py").write_text(MODELS)
    return dst


def advise_cli(packed: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m loader advise DST --quiet <fast options> ARGS``, the test models importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(packed.parent)]))
    cmd = [sys.executable, "-m", "loader", "advise", str(packed), "--quiet", "--image-size", "16", "--steps", "2",
           "--warmup", "1", "--repeats", "1", "--threads", "1", "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env=env, timeout=300)


def test_cli_json_schema_oom_rows_and_exit_0(packed, tmp_path):
    out = tmp_path / "advise.json"
    r = advise_cli(packed, "--model", "advise_models:OomAbove", "--batch-size", "4,8,16,32",
                   "--trial", "24", "--json", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert list(d) == ["device", "model", "image_size", "rows", "recommendation"]
    assert (d["device"], d["model"], d["image_size"]) == ("cpu", "advise_models:OomAbove", 16)
    row_keys = ["batch_size", "image_size", "status", "step_ms", "model_images_per_sec", "loader_images_per_sec",
                "end_to_end_images_per_sec", "data_wait_fraction", "peak_memory_mb", "bound", "trial",
                # issue 21 E: the rounds and the range of each rate (added; nothing removed)
                "rounds", "model_images_per_sec_min", "model_images_per_sec_max", "loader_images_per_sec_min",
                "loader_images_per_sec_max", "end_to_end_images_per_sec_min", "end_to_end_images_per_sec_max"]
    assert all(list(row) == row_keys for row in d["rows"])
    # 16 raises CUDA's OutOfMemoryError: an `oom` row, and 32 is never tried
    assert [(row["batch_size"], row["status"]) for row in d["rows"]] == [(4, "ok"), (8, "ok"), (16, "oom")]
    oom = d["rows"][2]
    assert all(oom[k] is None for k in row_keys[3:] if k != "rounds") and oom["rounds"] == 0
    for row in d["rows"][:2]:    # the default 3 rounds, each of --repeats 1
        assert row["rounds"] == 3
        for k in ("model", "loader", "end_to_end"):
            assert row[f"{k}_images_per_sec_min"] <= row[f"{k}_images_per_sec"] <= row[f"{k}_images_per_sec_max"]
    for row in d["rows"][:2]:
        assert list(row["trial"]) == ["images", "steps", "train_loss", "val_loss", "val_accuracy"]
        assert row["trial"]["images"] == 24 and row["trial"]["steps"] == 24 // row["batch_size"]
        assert row["bound"] in ("input", "compute") and 0 <= row["data_wait_fraction"] <= 1
    rec = d["recommendation"]
    assert list(rec) == ["batch_size", "largest_fitting", "input_bound", "lr", "text", "measurements_overlap"]
    assert isinstance(rec["measurements_overlap"], bool)
    assert rec["largest_fitting"] == 8 and rec["batch_size"] in (4, 8) and rec["lr"] is None
    assert "batch 16 is oom" in rec["text"]
    assert "oom" in r.stdout and "recommendation:" in r.stdout


def test_figures_come_from_counts_and_timers(packed):
    s = AdviseSettings(batch_sizes=(4, 8), prefetch=2, **dict(FAST, rounds=2))
    res = advise(packed, model=tiny, settings=s, progress=False)
    assert [r.status for r in res.rows] == ["ok", "ok"]
    for r in res.rows:
        b = r.batch_size
        assert r.rounds == 2
        for ts in (r.model_timings, r.loader_timings, r.end_to_end_timings):   # every round's measurements
            assert [(t.steps, t.count) for t in ts] == [(s.steps, s.steps * b)] * (s.repeats * s.rounds)
        for k, ts in (("model", r.model_timings), ("loader", r.loader_timings),
                      ("end_to_end", r.end_to_end_timings)):
            rates = [t.rate for t in ts]
            assert getattr(r, f"{k}_images_per_sec_min") == min(rates)
            assert getattr(r, f"{k}_images_per_sec_max") == max(rates)
            assert getattr(r, f"{k}_images_per_sec") == statistics.median(rates)
        assert len(r.data_wait_s) == s.repeats * s.rounds
        assert r.model_images_per_sec == statistics.median(t.count / t.seconds for t in r.model_timings)
        assert r.step_ms == 1e3 * statistics.median(t.seconds / t.steps for t in r.model_timings)
        assert r.loader_images_per_sec == statistics.median(t.rate for t in r.loader_timings)
        assert r.end_to_end_images_per_sec == statistics.median(t.rate for t in r.end_to_end_timings)
        assert r.data_wait_fraction == sum(r.data_wait_s) / sum(t.seconds for t in r.end_to_end_timings)
        assert 0 < r.data_wait_fraction < 1
        assert r.loader_memory_mb == 3 * batch_bytes(b, 16) / MB      # prefetch 2 + the batch in use
        assert r.peak_memory_mb == r.step_memory_mb + r.loader_memory_mb
        input_bound = r.loader_images_per_sec < r.model_images_per_sec or r.data_wait_fraction > 0.1
        assert r.bound == ("input" if input_bound else "compute")
    rec = res.recommendation
    best = max(r.end_to_end_images_per_sec for r in res.rows)
    within = [r.batch_size for r in res.rows if r.end_to_end_images_per_sec >= 0.95 * best]
    assert rec.batch_size == min(within) and rec.largest_fitting == 8
    assert rec.input_bound == (next(r for r in res.rows if r.batch_size == rec.batch_size).bound == "input")
    assert "no memory budget on cpu" in rec.text


def test_over_budget_row_gives_largest_fitting_below_it(packed):
    # At 128 px the loader's 3 batches in flight alone are 2.4 MB at batch 4 and 9.4 MB at 16:
    # with 8 MB less 10% (7.2 MB usable), 4 fits (its train step grows RSS by well under 4.8 MB) and 16 cannot.
    opts = dict(FAST, image_sizes=(128,))
    res = advise(packed, model=tiny, batch_sizes=(4, 16, 32), memory_budget_mb=8.0, progress=False, **opts)
    assert [(r.batch_size, r.status) for r in res.rows] == [(4, "ok"), (16, "over-budget")]
    assert res.rows[1].loader_memory_mb == 3 * batch_bytes(16, 128) / MB > 7.2
    rec = res.recommendation
    assert (rec.batch_size, rec.largest_fitting) == (4, 4)
    assert "of 7 MB usable: the 8 MB budget less a 10% safety margin" in rec.text
    assert "batch 16 is over-budget" in rec.text


def test_nothing_fits_in_a_tiny_budget(packed):
    res = advise(packed, model=tiny, batch_sizes=(4, 8), memory_budget_mb=0.01, progress=False, **FAST)
    (row,) = res.rows
    assert row.status == "over-budget" and row.peak_memory_mb > 0.01 * 0.9
    assert row.model_images_per_sec is not None and row.loader_images_per_sec is None and row.bound is None
    assert res.recommendation.batch_size is None and res.recommendation.largest_fitting is None
    assert "nothing fit: batch 4 at 16 px is over-budget" in res.recommendation.text


def test_trial_same_budget_same_initial_weights_validation_only(packed):
    Recording.seen = []
    res = advise(packed, model=Recording, batch_sizes=(4, 8), trial_images=40, base_batch_size=4, base_lr=0.1,
                 progress=False, **FAST)
    trials = [r.trial for r in res.rows]
    assert [r.batch_size for r in res.rows] == [4, 8] and None not in trials
    assert [(t.images, t.steps) for t in trials] == [(40, 10), (40, 5)]
    assert [t.lr for t in trials] == [0.1, 0.2]
    assert res.recommendation.lr == 0.1 * res.recommendation.batch_size / 4
    with seeded(0, torch.device("cpu")):
        expected = state_digest(Recording(CLASSES))
    # every copy (the warm-up step, 2 rows, 2 trials) started from the weights the seed gives
    assert Recording.seen == [expected] * 5
    assert {t.initial_digest for t in trials} == {expected}
    n = CLASSES * PER_CLASS
    val = split_indices(n, 0.2, "validation", 0)
    train = split_indices(n, 0.2, "training", 0)
    for t in trials:
        assert np.array_equal(t.val_records, val) and t.val_images == len(val) == 12
        assert np.intersect1d(t.train_records, t.val_records).size == 0
        assert np.isin(t.train_records, train).all() and len(t.train_records) == 40   # 40 of 48: one epoch
        assert 0 <= t.val_accuracy <= 1 and t.val_loss > 0 and t.train_loss > 0
    assert "Trial (40 training images each)" in res.recommendation.text


def test_trial_budget_is_a_multiple_of_every_batch_size_when_possible():
    assert trial_budget(100, [4, 8, 16]) == 96
    assert trial_budget(10, [16]) == 10          # no multiple fits: the last step takes part of a batch


BAD_SPECS = {
    "no-colon": "scripts.example_model",
    "two-colons": "a:b:c",
    "no-module": "no_such_module_xyz:model",
    "no-attribute": "advise_models:missing",
    "not-callable": "advise_models:not_callable",
    "not-a-module": "advise_models:not_a_module",
    "wrong-shape": "advise_models:wrong_shape",
    "wrong-classes": "advise_models:no_classes",
}


def test_bad_model_specs_give_one_line_and_exit_2(packed):
    with ThreadPoolExecutor(2) as pool:
        runs = pool.map(lambda spec: advise_cli(packed, "--model", spec, "--batch-size", "4"), BAD_SPECS.values())
        results = dict(zip(BAD_SPECS, runs))
    for name, r in results.items():
        lines = r.stderr.splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --model"), (name, r.stderr)
        assert r.stdout == "", name
    assert "MODULE:CALLABLE" in results["no-colon"].stderr
    assert "cannot import 'no_such_module_xyz'" in results["no-module"].stderr
    assert "no attribute 'missing'" in results["no-attribute"].stderr
    assert "returned a int, not a torch.nn.Module" in results["not-a-module"].stderr
    assert "got shape [2, 4]" in results["wrong-shape"].stderr
    assert "got shape [2, 5]" in results["wrong-classes"].stderr


def test_load_factory_restores_sys_path_and_raises_model_spec_error():
    before = list(sys.path)
    with pytest.raises(ModelSpecError, match="cannot import"):
        load_factory("no_such_module_xyz:f")
    assert sys.path == before
    assert load_factory("torch.nn:Linear") is nn.Linear


def test_ctrl_c_returns_what_was_measured(packed):
    def progress(line):
        if line.startswith("batch=8"):
            raise KeyboardInterrupt

    with pytest.raises(AdviseInterrupted) as e:
        advise(packed, model=tiny, batch_sizes=(4, 8, 16), progress=progress, **FAST)
    res = e.value.result
    assert res.interrupted and [(r.batch_size, r.status) for r in res.rows] == [(4, "ok")]
    assert res.recommendation.batch_size == 4


def test_cli_ctrl_c_prints_the_rows_so_far(packed, monkeypatch, capsys):
    import loader.advisor
    from loader import cli

    partial = advise(packed, model=tiny, batch_sizes=(4,), progress=False, **FAST)

    def interrupted(*a, **k):
        raise AdviseInterrupted(partial)

    monkeypatch.setattr(loader.advisor, "advise", interrupted)
    rc = cli.main(["advise", str(packed), "--model", "advise_models:tiny", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 130 and err == "interrupted: results so far\n"
    assert out.splitlines()[2].split()[:3] == ["4", "16", "ok"] and "recommendation: " in out


def test_host_globals_untouched(packed):
    import loader

    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    result = loader.advise(packed, model=tiny, batch_sizes=(4,), progress=False, **FAST)
    assert result.rows[0].status == "ok"
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng)


@pytest.mark.parametrize("options, param, msg", [
    (dict(base_lr=0.1), "base_batch_size",
     "base_batch_size and base_lr go together: give both or neither, got base_batch_size=None, base_lr=0.1"),
    (dict(batch_sizes=(0, 8)), "batch_sizes", "batch_sizes must be a non-empty sequence of integers >= 1, got (0, 8)"),
    (dict(image_sizes=(4,)), "image_sizes",
     "image_sizes must be a non-empty sequence of integers >= 8 (pixels), got (4,)"),
    (dict(optimizer="lamb"), "optimizer", "optimizer must be one of sgd, adamw, got 'lamb'"),
    (dict(safety_margin=1.5), "safety_margin", "safety_margin must be a fraction in [0, 1), got 1.5"),
    (dict(tolerance=-0.1), "tolerance", "tolerance must be a fraction in [0, 1), got -0.1"),
    (dict(validation_split=1.0), "validation_split", "validation_split must be a fraction in (0, 1), got 1.0"),
    (dict(memory_budget_mb=-1.0), "memory_budget_mb", "memory_budget_mb must be None or a positive number, got -1.0"),
    (dict(rounds=0), "rounds", "rounds must be an integer >= 1, got 0"),
    (dict(rounds=True), "rounds", "rounds must be an integer >= 1, got True"),
    (dict(steps=0), "steps", "steps must be an integer >= 1, got 0"),
    (dict(trial_images=0), "trial_images", "trial_images must be None or an integer >= 1, got 0"),
    (dict(max_batch_size=0), "max_batch_size", "max_batch_size must be an integer >= 1, got 0"),
])
def test_settings_are_validated(options, param, msg):
    """Messages name the Python parameter (the CLI maps it to its flag), exactly; ArgumentError carries it."""
    with pytest.raises(ArgumentError) as e:
        AdviseSettings(**options)
    assert (str(e.value), e.value.param) == (msg, param)


def test_lr_scaling_and_default_batch_sizes():
    s = AdviseSettings(base_batch_size=256, base_lr=0.1, max_batch_size=100)
    assert s.batch_sizes == (8, 16, 32, 64) and s.lr_for(512) == 0.2


def test_every_advise_flag_has_help():
    import argparse

    from loader.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = [a for a in sub.choices["advise"]._actions
               if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]   # hidden: old spellings
    assert len(actions) >= 20 and all(a.help and len(a.help) > 15 for a in actions), \
        [a.dest for a in actions if not a.help or len(a.help) <= 15]
    fields = set(AdviseSettings.__dataclass_fields__) - {"tolerance"}   # the 5% rule is an API-only knob
    flags = {a.dest for a in actions}
    renamed = {"image_sizes": "image_size", "memory_budget_mb": "memory_budget", "trial_images": "trial"}
    assert {f for f in fields if f not in flags and renamed.get(f) not in flags} == set()


def _row(b, size, e2e, *, loader=1000.0, model=2000.0, wait=0.2, acc=None):
    from loader.advisor.results import AdviseRow, TrialResult

    trial = None if acc is None else TrialResult(images=64, steps=64 // b, train_loss=1.0, val_loss=1.0 - acc,
                                                 val_accuracy=acc)
    bound = "input" if loader < model or wait > 0.1 else "compute"
    return AdviseRow(b, size, "ok", step_ms=1.0, model_images_per_sec=model, loader_images_per_sec=loader,
                     end_to_end_images_per_sec=e2e, data_wait_fraction=wait, peak_memory_mb=float(b), bound=bound,
                     trial=trial)


def test_recommend_rules_on_given_rows():
    from loader.advisor.recommend import recommend
    from loader.advisor.results import AdviseRow

    s = AdviseSettings(base_batch_size=32, base_lr=0.1)
    rows = [_row(16, 128, 900.0), _row(32, 128, 960.0), _row(64, 128, 1000.0),
            _row(16, 224, 400.0), _row(32, 224, 500.0), _row(64, 224, 505.0, loader=3000.0, wait=0.05),
            AdviseRow(128, 224, "oom", error="CUDA out of memory")]
    rec = recommend(rows, s, memory_budget_mb=1000.0, device="cpu", cores=2)
    # no trial: the largest image size decides; 32 is within 5% of 505 (>= 479.75), 16 is not
    assert (rec.image_size, rec.batch_size, rec.largest_fitting) == (224, 32, 64)
    assert rec.input_bound is True and rec.lr == 0.1
    assert rec.suggestions[0].startswith("decode on the GPU") and "at 128 px" in rec.suggestions[1]
    assert "batch 128 is oom" in rec.text and "batch 32 at 128 px (960 images/s)" in rec.text
    # with a trial, its best image size decides
    trial_rows = [_row(16, 128, 900.0, acc=0.8), _row(16, 224, 400.0, acc=0.7), _row(32, 224, 500.0, acc=0.6)]
    rec = recommend(trial_rows, s, memory_budget_mb=None, device="cuda:0", cores=2)
    assert (rec.image_size, rec.batch_size, rec.lr) == (128, 16, 0.05)
    assert "best validation top-1 80.0% at batch 16, 128 px" in rec.text
    assert not any("GPU" in t for t in rec.suggestions)


def test_advise_refuses_packs_without_one_class_per_image(tmp_path):
    """The sweep trains with cross-entropy and the trial scores top-1: an unlabeled pack is an error."""
    import loader
    from tests.conftest import jpeg_bytes, write

    for i in range(6):
        write(tmp_path / "src" / f"{i}.jpg", jpeg_bytes(seed=i))
    loader.pack(tmp_path / "src", tmp_path / "packed", workers=1, progress=False, unlabeled=True)
    with pytest.raises(LoaderError, match="is unlabeled; loader advise trains a classifier"):
        advise(tmp_path / "packed", model="scripts.example_model:small_cnn", settings=AdviseSettings(batch_sizes=(4,)),
               progress=False)


# ------------------------------------------------------------------ issue 21 E: a noisy machine


def _noisy(b, lo, med, hi, rounds=3, size=224):
    """An ok row whose end-to-end rate is ``med`` images/s, measured between ``lo`` and ``hi``; compute-bound."""
    from loader.advisor.results import AdviseRow

    return AdviseRow(b, size, "ok", step_ms=1.0, model_images_per_sec=2000.0, loader_images_per_sec=3000.0,
                     end_to_end_images_per_sec=med, end_to_end_images_per_sec_min=lo,
                     end_to_end_images_per_sec_max=hi, data_wait_fraction=0.05, peak_memory_mb=float(b),
                     bound="compute", rounds=rounds)


def test_overlapping_measurements_are_said_not_picked_confidently():
    """The issue's run: one busy spell made batch 32 look ten times faster. Same medians, two verdicts."""
    from loader.advisor.recommend import recommend

    s = AdviseSettings()
    noisy = [_noisy(8, 74.0, 78.0, 80.0), _noisy(16, 48.0, 75.0, 79.0), _noisy(32, 70.0, 72.0, 765.0)]
    rec = recommend(noisy, s, memory_budget_mb=None, device="cpu", cores=2)
    assert rec.batch_size == 8 and rec.measurements_overlap is True
    assert ("The measurements overlap: end-to-end images/s at 224 px, min-max over 3 rounds: batch 8 74-80, "
            "batch 16 48-79, batch 32 70-765; the ranges are wider than the 5% that decides between batch sizes, "
            "so no batch size is clearly best: re-run on a quiet machine or with more rounds. By the medians alone, "
            "not a confident pick: batch 8 at 224 px, 78 images/s end to end (the best end-to-end throughput "
            "measured).") in rec.text
    assert "Recommended:" not in rec.text
    assert rec.to_dict()["measurements_overlap"] is True

    quiet = [_noisy(8, 77.0, 78.0, 79.0), _noisy(16, 74.0, 75.0, 76.0), _noisy(32, 71.0, 72.0, 73.0)]
    rec = recommend(quiet, s, memory_budget_mb=None, device="cpu", cores=2)
    assert rec.batch_size == 8 and rec.measurements_overlap is False
    assert "Recommended: batch 8 at 224 px, 78 images/s end to end (the best end-to-end throughput measured)." \
        in rec.text
    assert "overlap" not in rec.text


def test_overlap_is_judged_on_what_decides_the_pick():
    from loader.advisor.recommend import overlap, recommend

    s = AdviseSettings()
    # 32 is within 5% of 64 (750 vs 760) even at its worst against 64's best (745 >= 0.95 * 770), and 16
    # stays out even at its best (670 < 0.95 * 750): wide-ish ranges, but they cannot change the pick
    rows = [_noisy(8, 400.0, 410.0, 420.0), _noisy(16, 650.0, 660.0, 670.0), _noisy(32, 745.0, 750.0, 760.0),
            _noisy(64, 750.0, 760.0, 770.0)]
    rec = recommend(rows, s, memory_budget_mb=None, device="cpu", cores=2)
    assert (rec.batch_size, rec.measurements_overlap) == (32, False)
    assert ("Recommended: batch 32 at 224 px, 750 images/s end to end (within 5% of the best, 760 images/s at "
            "batch 64: a larger batch buys no speed, a smaller one updates the model more often).") in rec.text
    # 16 at its best (720) reaches within 5% of the others' worst (0.95 * 750 = 712.5): it might be the pick
    rows[1] = _noisy(16, 650.0, 660.0, 720.0)
    assert overlap(rows, rows[2], 0.05) is True
    # the pick at its worst (700) is more than 5% below 64's best (0.95 * 770 = 731.5)
    rows[1] = _noisy(16, 650.0, 660.0, 670.0)
    rows[2] = _noisy(32, 700.0, 750.0, 760.0)
    assert overlap(rows, rows[2], 0.05) is True
    # one row: nothing to choose between; rows without a range (rounds=1, repeats=1): the medians decide
    alone = _noisy(8, 10.0, 50.0, 900.0)
    assert overlap([alone], alone, 0.05) is False
    flat = [_noisy(8, 95.0, 95.0, 95.0, rounds=1), _noisy(16, 100.0, 100.0, 100.0, rounds=1)]
    assert overlap(flat, flat[0], 0.05) is False


def test_rounds_go_round_robin_over_the_rows(packed, monkeypatch):
    """Round 1 sweeps (memory, oom stops the size); then every row that fit, all of them per round."""
    import dataclasses

    import loader.advisor.sweep as sweep

    calls = []

    def first(ctx, b, size, log):
        calls.append((1, b, size))
        if b == 16:
            return dataclasses.replace(_noisy(b, 1.0, 1.0, 1.0, rounds=0, size=size), status="oom", error="oom")
        return _noisy(b, 100.0 - b, 100.0 - b, 100.0 - b, rounds=1, size=size)

    def again(ctx, row, log, *, round_no):
        calls.append((round_no, row.batch_size, row.image_size))
        if (round_no, row.batch_size, row.image_size) == (2, 8, 24):   # out of memory in round 2: no round 3
            return row, "CUDA out of memory"
        return dataclasses.replace(row, rounds=row.rounds + 1), None

    monkeypatch.setattr(sweep, "measure_row", first)
    monkeypatch.setattr(sweep, "remeasure", again)
    res = advise(packed, model=tiny, batch_sizes=(4, 8, 16, 32), progress=False,
                 **dict(FAST, image_sizes=(16, 24), rounds=3))
    assert calls == [(1, 4, 16), (1, 8, 16), (1, 16, 16), (1, 4, 24), (1, 8, 24), (1, 16, 24),
                     (2, 4, 16), (2, 8, 16), (2, 4, 24), (2, 8, 24),
                     (3, 4, 16), (3, 8, 16), (3, 4, 24)]
    assert [(r.batch_size, r.image_size, r.rounds) for r in res.rows] == [
        (4, 16, 3), (8, 16, 3), (16, 16, 0), (4, 24, 3), (8, 24, 1), (16, 24, 0)]
    assert res.notes == ("batch 8 at 24 px ran out of memory in round 2; its figures come from 1 round(s)",)


def test_one_round_says_it_cannot_tell_noise(packed, monkeypatch):
    import loader.advisor.sweep as sweep

    monkeypatch.setattr(sweep, "measure_row", lambda ctx, b, size, log: _noisy(b, 90.0, 90.0, 90.0, 1, size))
    res = advise(packed, model=tiny, batch_sizes=(4, 8), progress=False, **FAST)
    assert res.notes == ("one round (rounds=1): each row was measured in one stretch, so a busy spell of the "
                         "machine looks like a difference between batch sizes; rounds=3 or more interleaves them",)
