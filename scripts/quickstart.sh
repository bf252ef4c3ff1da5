#!/usr/bin/env bash
# README command 1: set up (idempotent), then the main job end to end on a small
# generated dataset: generate photo-like JPEGs, pack them, load one epoch with
# ImageLoader, draw one batch as the model sees it (loader show), and print a short benchmark table against the DataLoader baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
D=${LOADER_QUICKSTART_DIR:-.cache/quickstart}
PER_CLASS=${LOADER_QUICKSTART_PER_CLASS:-60}
PY=.venv/bin/python
echo "== 1/5 generating $((10 * PER_CLASS)) photo-like JPEGs in $D/images"
$PY scripts/make_dataset.py "$D/images" --classes 10 --per-class "$PER_CLASS"
echo "== 2/5 packing into LMDB shards: $D/packed"
.venv/bin/loader pack "$D/images" "$D/packed" --overwrite
.venv/bin/loader info "$D/packed"
echo "== 3/5 loading one epoch with loader.ImageLoader"
$PY scripts/load_epoch.py "$D/packed" --batch-size 64
echo "== 4/5 one batch as the model sees it (denormalized, labelled): $D/show.png"
.venv/bin/loader show "$D/packed" --batch-size 8 --columns 4 --image-size 128 --out "$D/show.png"
echo "== 5/5 benchmark: images/s against torch DataLoader + pillow-simd (same run)"
.venv/bin/loader bench "$D/images" --packed "$D/packed" --batch-size 32,64 --rounds 1 --batches 6 \
  --json "$D/bench.json" --plot "$D/bench.png"
