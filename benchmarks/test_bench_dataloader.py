"""The baseline: torch DataLoader + torchvision-style PIL transforms, one epoch per round.

The bench harness's ``dataloader`` (original files) and ``dataloader-lmdb``
(packed shards) contenders; persistent workers, started before the timing.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("name, train", [("dataloader", True), ("dataloader-lmdb", True), ("dataloader", False)],
                         ids=["folder-train", "lmdb-train", "folder-eval"])
def test_dataloader_epoch(measure, bench_images, bench_packed, bench_config, name, train):
    from loader.bench import ContenderSpec, make_contender

    c = make_contender(ContenderSpec(name, packed=bench_packed, folder=bench_images,
                                     batch_size=bench_config.batch_size, image_size=bench_config.image_size,
                                     train=train, workers=bench_config.workers))
    c.create()
    try:
        batches = len(c.obj)

        def epoch():
            return sum(c.step() for _ in range(batches))

        epoch()   # start the persistent workers
        rate = measure(epoch, batch_size=bench_config.batch_size, image_size=bench_config.image_size,
                       workers=bench_config.workers, source="folder" if name == "dataloader" else "lmdb",
                       train=train)
        assert rate > 0
    finally:
        c.close()
