"""ImageLoader epoch throughput on the packed dataset, train and eval pipelines.

One loader per test, created outside the timing; each round is one full epoch
(``iter()`` -> StopIteration), images counted from the labels of every batch.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_imageloader_epoch(measure, bench_packed, bench_config, train):
    from loader.imageloader import ImageLoader

    loader = ImageLoader(bench_packed, bench_config.batch_size, image_size=bench_config.image_size,
                         train=train, num_threads=bench_config.workers)
    try:
        def epoch():
            n = 0
            for _images, labels in loader:
                n += int(labels.shape[0])
            if loader.device.type == "cuda":
                import torch

                torch.cuda.synchronize(loader.device)
            return n

        epoch()   # build the pipeline: creation and first batch are not throughput
        rate = measure(epoch, batch_size=bench_config.batch_size, image_size=bench_config.image_size,
                       threads=loader.num_threads, device=str(loader.device), train=train,
                       batches_per_epoch=len(loader))
        assert rate > 0
    finally:
        loader.close()
