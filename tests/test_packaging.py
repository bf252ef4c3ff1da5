"""Packaging: what `pip install loader` asks for, and what works without the `dali` extra.

Users install into the environment they already have (torch, torchvision and
so plain Pillow), so the package depends on Pillow, not pillow-simd, and NVIDIA
DALI is an extra. Without DALI, `import loader`, `pack`, `info` and `verify
--no-decode` work; ImageLoader says in one line what to install.

The no-DALI cases run in a subprocess whose import system refuses `nvidia.dali`
(as when the wheel is not installed but other `nvidia.*` packages are).
scripts/check_wheel.sh checks the built wheel in a fresh venv.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project() -> dict:
    """pyproject.toml's [project] table."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def _names(reqs: list[str]) -> set[str]:
    return {_name(r) for r in reqs}


def _by_name(reqs: list[str]) -> dict[str, Requirement]:
    return {_name(r): Requirement(r) for r in reqs}


# -- pyproject.toml -----------------------------------------------------------

def test_dependencies_are_what_users_already_have(project):
    deps = _by_name(project["dependencies"])
    assert set(deps) == {"torch", "pillow", "lmdb", "numpy", "tqdm"}
    # The README's setup installs the CPU torch 2.13.0 wheel first: the range must accept it,
    # or pip would replace it with a (multi-GB) CUDA build.
    assert deps["torch"].specifier.contains("2.13.0") and not deps["torch"].specifier.contains("2.0.1")


def test_pillow_simd_is_not_a_requirement_anywhere(project):
    extras = project["optional-dependencies"]
    for where, reqs in [("dependencies", project["dependencies"]), *extras.items()]:
        assert "pillow-simd" not in _names(reqs), where


def test_dali_only_in_the_dali_extra(project):
    extras = project["optional-dependencies"]
    assert not any(n.startswith("nvidia-dali") for n in _names(project["dependencies"]))
    dali = _by_name(extras["dali"])
    assert set(dali) == {"nvidia-dali-cuda120"}
    spec = dali["nvidia-dali-cuda120"].specifier
    assert spec.contains("1.40") and spec.contains("2.4.0") and not spec.contains("1.39")
    assert [n for n, reqs in extras.items() if any(_name(r).startswith("nvidia-dali") for r in reqs)] == ["dali"]
    assert "matplotlib" in _names(extras["bench"])
    assert {"pytest", "pytest-benchmark", "ruff", "matplotlib"} <= _names(extras["dev"])


# -- without DALI -------------------------------------------------------------

_NO_DALI = textwrap.dedent("""\
    import importlib.abc, sys

    class _NoDali(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "nvidia.dali" or name.startswith("nvidia.dali."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoDali())
    try:
        import nvidia.dali  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("test bug: nvidia.dali is still importable")
""")


def _run_without_dali(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", _NO_DALI + textwrap.dedent(code), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120, check=False)


def _cli_without_dali(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m loader ARGS`` with DALI blocked."""
    return _run_without_dali("import runpy; sys.argv = ['loader', *sys.argv[1:]]; "
                             "runpy.run_module('loader', run_name='__main__', alter_sys=True)", *args, cwd=cwd)


@pytest.fixture
def packed_without_dali(image_tree, tmp_path):
    dst = tmp_path / "packed"
    r = _run_without_dali("""
        import loader
        report = loader.pack(sys.argv[1], sys.argv[2], workers=2, progress=False)
        assert "nvidia.dali" not in sys.modules
        print(report.num_records)
    """, str(image_tree), str(dst), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["9"]
    return dst


def test_pack_info_and_verify_no_decode_work_without_dali(packed_without_dali, tmp_path):
    assert (packed_without_dali / "manifest.json").is_file()
    r = _cli_without_dali("info", str(packed_without_dali), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["num_records"] == 9 and [c["count"] for c in info["classes"]] == [3, 3, 3]

    r = _cli_without_dali("verify", str(packed_without_dali), "--no-decode", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "verified 9 records" in r.stdout and "all good" in r.stdout


def test_pack_cli_works_without_dali(image_tree, tmp_path):
    r = _cli_without_dali("pack", str(image_tree), str(tmp_path / "out"), "--quiet", "--workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "packed 9 images" in r.stdout


def test_imageloader_without_dali_says_what_to_install(tmp_path):
    r = _run_without_dali("""
        import json
        import loader
        from loader.errors import LoaderError
        try:
            loader.ImageLoader
        except ImportError as e:
            print(json.dumps({"message": str(e), "name": e.name, "loader_error": isinstance(e, LoaderError),
                              "not_found": isinstance(e, ModuleNotFoundError)}))
        else:
            raise SystemExit("loader.ImageLoader did not fail without DALI")
    """, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    msg = got["message"]
    assert "\n" not in msg
    assert "pip install 'loader[dali]'" in msg and "nvidia-dali-cuda" in msg and "'nvidia.dali'" in msg, msg
    assert got["name"] == "nvidia.dali" and got["loader_error"] and got["not_found"]


def test_another_missing_module_is_not_reported_as_dali(tmp_path):
    # Only a missing DALI gets the install hint; anything else surfaces as itself.
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # loader.load.imageloader imports torch first
        import loader
        try:
            loader.ImageLoader
        except ModuleNotFoundError as e:
            print(type(e).__name__, e.name, "loader[dali]" in str(e))
    """)], capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ModuleNotFoundError", "torch", "False"]


def test_verify_decode_without_dali_is_a_one_line_error(packed_without_dali, tmp_path):
    r = _cli_without_dali("verify", str(packed_without_dali), "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "loader[dali]" in lines[0], r.stderr


def test_bench_without_dali_is_a_one_line_error(packed_without_dali, tmp_path):
    r = _cli_without_dali("bench", str(packed_without_dali), "--batch-size", "4", "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: loader bench needs NVIDIA DALI"), r.stderr
