"""ImageLoader epoch throughput on the packed dataset, train and eval pipelines.

The bench harness's ``loader`` contender, created outside the timing; each
round is one full epoch (``len(loader)`` batches), images counted from the
labels of every batch.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_imageloader_epoch(measure, bench_packed, bench_config, train):
    from loader.bench import ContenderSpec, make_contender
    from loader.load.imageloader import resolve_device

    c = make_contender(ContenderSpec("loader", packed=bench_packed, batch_size=bench_config.batch_size,
                                     image_size=bench_config.image_size, train=train,
                                     threads=bench_config.workers, device=str(resolve_device("auto"))))
    c.create()
    try:
        batches = len(c.obj)

        def epoch():
            return sum(c.step() for _ in range(batches))

        epoch()   # build the pipeline: creation and first batch are not throughput
        rate = measure(epoch, sync=c.sync, batch_size=bench_config.batch_size, image_size=bench_config.image_size,
                       threads=c.obj.num_threads, device=c.spec.device, train=train, batches_per_epoch=batches)
        assert rate > 0
    finally:
        c.close()
