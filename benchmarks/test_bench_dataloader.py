"""The baseline: torch DataLoader + torchvision-style PIL transforms, one epoch per round.

Over the original files (``folder``) and over the packed shards (``lmdb``);
persistent workers, started before the timing.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("source, train", [("folder", True), ("lmdb", True), ("folder", False)],
                         ids=["folder-train", "lmdb-train", "folder-eval"])
def test_dataloader_epoch(measure, bench_images, bench_packed, bench_config, source, train):
    from loader.bench.baseline import ImageFolderDataset, PackedFileDataset, baseline_loader

    size = bench_config.image_size
    ds = (ImageFolderDataset(bench_images, size, train) if source == "folder"
          else PackedFileDataset(bench_packed, size, train))
    dl = baseline_loader(ds, bench_config.batch_size, workers=bench_config.workers, train=train)
    it = None
    try:
        def epoch():
            nonlocal it
            n = 0
            it = iter(dl)
            for _images, labels in it:
                n += int(labels.shape[0])
            return n

        epoch()   # start the persistent workers
        rate = measure(epoch, batch_size=bench_config.batch_size, image_size=size,
                       workers=bench_config.workers, source=source, train=train)
        assert rate > 0
    finally:
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
