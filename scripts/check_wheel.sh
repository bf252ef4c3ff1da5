#!/usr/bin/env bash
# Install check: does `pip install 'loader[dali]'` work in the environment users
# already have, and does the installed package work on its own?
#
#   1. build a wheel of this checkout (from a copy of its files, so no build/ or
#      egg-info lands in the repo);
#   2. make a FRESH venv holding torch 2.13.0 (CPU wheel) and plain Pillow: the
#      user's existing environment;
#   3. install the wheel with the [dali] extra (no -e; nothing runs from the
#      repo: a temp cwd and no PYTHONPATH, so the checkout is not importable);
#   4. generate 2 classes x 20 JPEGs, `loader pack`, `loader info`, `loader
#      verify`, one ImageLoader epoch, and check that torch and Pillow are the
#      ones the user had (plain Pillow, not pillow-simd).
#
# Prints `check_wheel: ok (...)` and exits 0, or exits non-zero at the first
# failure. Temp dirs are removed either way. Uses pip's cache (DALI is ~1 GB).
# PYTHON=/path/to/python picks the interpreter for the fresh venv.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
SECONDS=0
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP
export PYTHONNOUSERSITE=1

T=$(mktemp -d "${TMPDIR:-/tmp}/check_wheel.XXXXXX")
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/src" "$T/dist" "$T/work"
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }

echo "== check_wheel: building a wheel of $REPO"
# The checkout's files as git sees them (tracked + untracked, not ignored, as
# they are on disk); outside a git checkout, everything but venvs and caches.
"$PY" - "$REPO" "$T/src" <<'PYCOPY'
import os, shutil, subprocess, sys
repo, dst = sys.argv[1:]
try:
    out = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f and os.path.isfile(os.path.join(repo, f))]
except (OSError, subprocess.CalledProcessError):
    skip = {".git", ".venv", ".cache", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks"}
    files = []
    for d, dirs, names in os.walk(repo):
        dirs[:] = [x for x in dirs if x not in skip and not x.endswith(".egg-info")]
        files += [os.path.relpath(os.path.join(d, f), repo) for f in names]
for f in files:
    os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
    shutil.copy2(os.path.join(repo, f), os.path.join(dst, f))
PYCOPY
# setup.sh puts setuptools and wheel into .venv: build with them (fast, offline);
# without .venv, let pip fetch the build backend (build isolation).
BUILD_PY=$REPO/.venv/bin/python
if "$BUILD_PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' 2>/dev/null; then
  "$BUILD_PY" -m pip --disable-pip-version-check -q wheel --no-deps --no-build-isolation -w "$T/dist" "$T/src"
else
  "$PY" -m pip --disable-pip-version-check -q wheel --no-deps -w "$T/dist" "$T/src"
fi
WHEELS=("$T"/dist/loader-*.whl)
[ "${#WHEELS[@]}" -eq 1 ] && [ -f "${WHEELS[0]}" ] || fail "expected one loader-*.whl, got: $(ls "$T/dist")"
WHEEL=${WHEELS[0]}
echo "== check_wheel: $(basename "$WHEEL")"

echo "== check_wheel: fresh venv with the user's torch 2.13.0 and plain Pillow"
"$PY" -m venv "$T/venv"
VPY=$T/venv/bin/python
vpip() { "$VPY" -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
vpip install torch==2.13.0 Pillow
cd "$T/work"   # from here on nothing can import the checkout
before=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"), m.version("Pillow"))')

echo "== check_wheel: pip install '$(basename "$WHEEL")[dali]'"
vpip install "$WHEEL[dali]"
after=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"), m.version("Pillow"))')
[ "$before" = "$after" ] || fail "installing the wheel replaced the user's torch/Pillow: '$before' -> '$after'"
vpip check || fail "pip check: the venv's requirements are inconsistent"

echo "== check_wheel: generate, pack, info, verify with the installed console script"
"$VPY" -I -c 'from loader.synthetic import make_dataset; make_dataset("images", classes=2, per_class=20, seed=0, workers=2)'
"$T/venv/bin/loader" pack images packed --quiet
records=$("$T/venv/bin/loader" info packed --json - | "$VPY" -I -c 'import json, sys; print(json.load(sys.stdin)["num_records"])')
[ "$records" = 40 ] || fail "loader info says $records records, expected 40"
"$T/venv/bin/loader" info packed >/dev/null
"$T/venv/bin/loader" verify packed --quiet

echo "== check_wheel: one ImageLoader epoch; which loader, torch, Pillow were used"
summary=$("$VPY" -I - <<'PYCHECK'
import importlib.metadata as md
import os
import sysconfig

import PIL
import torch

import loader

site = os.path.realpath(sysconfig.get_paths()["purelib"])
where = os.path.realpath(loader.__file__)
assert where.startswith(site + os.sep), f"loader imported from {where}, not the venv's site-packages {site}"

ld = loader.ImageLoader("packed", batch_size=8, image_size=64)
batches = samples = 0
labels_seen = set()
for images, labels in ld:
    assert images.shape == (8, 3, 64, 64) and labels.shape == (8,), (images.shape, labels.shape)
    batches += 1
    samples += len(labels)
    labels_seen |= set(labels.tolist())
assert batches == len(ld) == 5, f"{batches} batches seen, len() promised {len(ld)} (40 records / 8)"
assert samples == len(ld) * ld.batch_size == 40, f"{samples} samples seen, expected {len(ld) * ld.batch_size}"
assert labels_seen == {0, 1}, f"labels seen: {sorted(labels_seen)}"

pillow = md.version("Pillow")
assert not PIL.__version__.endswith(".post0"), f"PIL is pillow-simd ({PIL.__version__}), not plain Pillow"
assert PIL.__version__ == pillow, f"PIL {PIL.__version__} is not the installed Pillow {pillow}"
try:
    md.version("pillow-simd")
except md.PackageNotFoundError:
    pass
else:
    raise AssertionError("pillow-simd is installed in the fresh venv")
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__}"
print(f"loader {loader.__version__} from site-packages, torch {torch.__version__}, Pillow {pillow}, "
      f"DALI {md.version('nvidia-dali-cuda120')}; 40 records packed; one epoch: {batches} batches, "
      f"{samples} images")
PYCHECK
) || fail "the installed package does not work (see above)"
echo "check_wheel: ok ($summary; ${SECONDS} s)"
