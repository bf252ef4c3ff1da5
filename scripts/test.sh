#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k pack -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
