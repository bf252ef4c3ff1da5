"""A small CPU-friendly CNN for ``loader advise --model scripts.example_model:small_cnn`` (run from the repo root).

It is the model of ``scripts/train_example.py`` (four strided conv blocks with
BatchNorm, global average pooling, a linear classifier; about 60k parameters),
imported from there so there is one definition. ``loader advise`` calls it
with ``num_classes=`` the dataset's class count.
"""

from __future__ import annotations

from scripts.train_example import small_cnn

__all__ = ["small_cnn"]
