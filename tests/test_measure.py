"""loader.measure: what `loader bench` and `loader advise` share -- one clock, one round-robin, one validation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from loader.advisor import AdviseSettings
from loader.bench import BenchSettings
from loader.errors import ArgumentError
from loader.measure import (
    Spread,
    check_fraction,
    check_int,
    check_sizes,
    interleaved,
    is_int,
    resolve_run_device,
)

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions (absolute names)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_advisor_imports_nothing_from_bench():
    """Issue 26 section 5: advise shares the clock, RSS, device and table through loader.measure, not bench."""
    files = sorted((REPO / "loader" / "advisor").glob("*.py"))
    assert len(files) >= 9
    offending = {f.name: sorted(m for m in _imports(f) if m == "loader.bench" or m.startswith("loader.bench."))
                 for f in files}
    assert {k: v for k, v in offending.items() if v} == {}
    # and loader.measure itself stands below both commands
    assert not {m for m in _imports(REPO / "loader" / "measure.py")
                if m.startswith(("loader.bench", "loader.advisor", "loader.load.imageloader"))}


def test_the_ast_check_would_see_a_bench_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from loader.bench.harness import time_steps\nimport loader.bench.procstat\n")
    assert {"loader.bench.harness", "loader.bench.procstat"} <= _imports(p)


def test_old_bench_names_are_the_shared_ones():
    """benchmarks/ and older code import these from bench: the same objects, not copies."""
    import loader.measure as m
    from loader.bench import Timing, batch_bytes, text_table, time_steps
    from loader.bench.harness import resolve_run_device as harness_rrd
    from loader.bench.procstat import rss_bytes

    assert (Timing, time_steps, batch_bytes, text_table, rss_bytes, harness_rrd) == (
        m.Timing, m.time_steps, m.batch_bytes, m.text_table, m.rss_bytes, m.resolve_run_device)


def test_interleaved_is_round_robin():
    assert list(interleaved([8, 16, 32], 3)) == [(0, 8), (0, 16), (0, 32), (1, 8), (1, 16), (1, 32),
                                                 (2, 8), (2, 16), (2, 32)]
    assert [k for _, k in interleaved("abc", 3, rotate=True)] == list("abcbcacab")
    assert list(interleaved([], 3)) == [] and list(interleaved([1], 0)) == []


def test_spread():
    s = Spread.of([78.0, 48.0, 765.0])
    assert (s.median, s.low, s.high, s.n) == (78.0, 48.0, 765.0, 3)
    assert Spread.of([2.0, 4.0]).median == 3.0
    assert Spread.of([100.0, 110.0]).overlaps(Spread.of([110.0, 120.0]))
    assert not Spread.of([100.0, 109.0]).overlaps(Spread.of([110.0, 120.0]))
    assert Spread.of([90.0, 100.0, 110.0]).relative() == pytest.approx(0.2)
    with pytest.raises(ArgumentError, match="at least one value"):
        Spread.of([])


def test_is_int_and_validators():
    assert [is_int(v) for v in (0, -3, True, 1.0, "1", None)] == [True, True, False, False, False, False]
    check_int("warmup", 0, 0)
    check_int("threads", None, 1, optional=True)
    for v, msg in ((True, "warmup must be an integer >= 0, got True"),
                   (-1, "warmup must be an integer >= 0, got -1"),
                   (1.0, "warmup must be an integer >= 0, got 1.0")):
        with pytest.raises(ArgumentError) as e:
            check_int("warmup", v, 0)
        assert (str(e.value), e.value.param) == (msg, "warmup")
    with pytest.raises(ArgumentError) as e:
        check_int("threads", 0, 1, optional=True)
    assert str(e.value) == "threads must be None or an integer >= 1, got 0"
    assert check_sizes("batch_sizes", [8, 16], 1) == (8, 16)
    with pytest.raises(ArgumentError) as e:
        check_sizes("image_sizes", (224, 4), 8, unit="pixels")
    assert str(e.value) == "image_sizes must be a non-empty sequence of integers >= 8 (pixels), got (224, 4)"
    check_fraction("tolerance", 0)
    for v in (1, 1.0, -0.1, "0.5", True, float("nan")):
        with pytest.raises(ArgumentError, match="^tolerance must be a fraction in \\[0, 1\\), got "):
            check_fraction("tolerance", v)
    with pytest.raises(ArgumentError, match=r"^validation_split must be a fraction in \(0, 1\), got 0$"):
        check_fraction("validation_split", 0, zero=False)


# The fields both settings have: one validation, so the same bad value gives the same message and param.
SHARED_BAD = [
    ("batch_sizes", (0, 8), "batch_sizes must be a non-empty sequence of integers >= 1, got (0, 8)"),
    ("batch_sizes", (), "batch_sizes must be a non-empty sequence of integers >= 1, got ()"),
    ("image_sizes", (4,), "image_sizes must be a non-empty sequence of integers >= 8 (pixels), got (4,)"),
    ("repeats", 0, "repeats must be an integer >= 1, got 0"),
    ("warmup", -1, "warmup must be an integer >= 0, got -1"),
    ("prefetch", True, "prefetch must be an integer >= 1, got True"),
    ("seed", 1.5, "seed must be an integer >= 0, got 1.5"),
    ("threads", 0, "threads must be None or an integer >= 1, got 0"),
    ("memory_budget_mb", -1.0, "memory_budget_mb must be None or a positive number, got -1.0"),
    ("memory_budget_mb", float("inf"), "memory_budget_mb must be None or a positive number, got inf"),
]


@pytest.mark.parametrize("field, bad, msg", SHARED_BAD, ids=[f"{f}={b!r}" for f, b, _ in SHARED_BAD])
@pytest.mark.parametrize("settings", [BenchSettings, AdviseSettings])
def test_shared_fields_one_validation(settings, field, bad, msg):
    with pytest.raises(ArgumentError) as e:
        settings(**{field: bad})
    assert (str(e.value), e.value.param) == (msg, field)


BENCH_BAD = [
    (dict(workers=-1), "workers", "workers must be an integer >= 0, got -1"),
    (dict(batches=0), "batches", "batches must be None or an integer >= 1, got 0"),
    (dict(seconds=0), "seconds", "seconds must be None or a positive number, got 0"),
    (dict(batches=2, seconds=1.0), "batches",
     "batches and seconds are exclusive: give one, got batches=2 and seconds=1.0"),
    (dict(pipelines=("loader", "nope")), "pipelines",
     "pipelines must name some of loader, dataloader, dataloader-lmdb, decode-limit, service, got ('loader', 'nope')"),
    (dict(pipelines=()), "pipelines",
     "pipelines must name some of loader, dataloader, dataloader-lmdb, decode-limit, service, got ()"),
    (dict(color_jitter=True), "color_jitter", "color_jitter must be a number >= 0, got True"),
]


@pytest.mark.parametrize("options, param, msg", BENCH_BAD)
def test_bench_settings_messages_name_the_parameter(options, param, msg):
    with pytest.raises(ArgumentError) as e:
        BenchSettings(**options)
    assert (str(e.value), e.value.param) == (msg, param)


def test_a_bad_device_names_the_parameter():
    pytest.importorskip("nvidia.dali")
    with pytest.raises(ArgumentError) as e:
        resolve_run_device("tpu", "loader bench")
    assert e.value.param == "device" and "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'" in str(e.value)
    assert str(resolve_run_device("cpu", "loader bench")) == "cpu"
