"""loader 0.3's module paths (every module directly in loader/) still import, for one release: the same
module objects as the new paths, each with a DeprecationWarning naming where it went."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loader._moved import MOVED

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import importlib, json, sys, warnings
import loader
from loader._moved import MOVED
out = {}
for old, new in MOVED.items():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mod = importlib.import_module("loader." + old)
    msgs = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]
    out[old] = [mod is importlib.import_module(new), mod.__spec__.name, msgs]
from loader.pipeline import build_pipeline           # a name through the old path
from loader.load.pipeline import build_pipeline as b2
out["__same_function__"] = build_pipeline is b2
print(json.dumps(out))
"""


def test_every_old_path_is_the_new_module_with_a_deprecation_warning():
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out.pop("__same_function__") is True
    assert set(out) == set(MOVED) and len(MOVED) == 23
    for old, (same, spec_name, msgs) in out.items():
        assert same, old
        assert spec_name == MOVED[old], (old, spec_name)        # the module keeps its own spec
        assert msgs == [f"loader.{old} moved to {MOVED[old]} in loader 0.4; the old path goes in 0.5"], old


def test_every_new_path_exists_and_no_old_file_is_left():
    for old, new in MOVED.items():
        assert (REPO / (new.replace(".", "/") + ".py")).is_file(), new
        assert not (REPO / "loader" / f"{old}.py").exists(), old
    assert sorted(p.name for p in (REPO / "loader").glob("*.py")) == [
        "__init__.py", "__main__.py", "_moved.py", "errors.py", "measure.py", "rng.py", "synthetic.py", "units.py",
        "validate.py", "version.py"]
