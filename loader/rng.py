"""Every random stream of loader, in one table: what it draws and the key it is seeded from.

Each stream is a numpy generator seeded by a key that starts with the user's ``seed`` and ends
with a tag, so that two streams never share draws: turning colour jitter on leaves the crops as
they are, a batch transform's draws are apart from the crops of its batch, and the bench's decode
ceiling is apart from everything. The keys are what make batches a function of (seed, epoch,
position) alone: a resumed run, every DDP rank and the CPU and GPU graphs agree. Changing a tag
or a key changes every batch (``tests/data/v3/batches-0.2.0.json`` would no longer match).

=====================  ===========================================  ============================
stream                 key                                          used by
=====================  ===========================================  ============================
validation split       ``[seed, SPLIT]``                            ``load.sampler.split_indices``
epoch order            ``[seed, epoch]`` (untagged: loader 0.1's)   ``load.sampler.epoch_order``
crop windows, flips    ``[seed, epoch, first position, CROP]``      ``load.feed`` (per batch)
colour jitter          ``[seed, epoch, first position, JITTER]``    ``load.feed`` (per batch)
block shuffle shards   ``[seed, epoch, BLOCK_SHARDS]``              ``load.sampler.block_windows``
block shuffle records  ``[seed, epoch, BLOCK_RECORDS]``             ``load.sampler.block_order``
batch transform        ``SeedSequence([seed, epoch, rank, batch,    ``augment.batch``
                       BATCH_TRANSFORM])``
bench decode ceiling   ``[seed, DECODE_LIMIT_ORDER]``,              ``bench.decode_limit``
                       ``[seed, DECODE_LIMIT_CROP]``
pack record order      ``[shuffle_seed, PACK_ORDER]``               ``convert.packing.pack``
=====================  ===========================================  ============================

("first position": the epoch position of the batch's first record, so the crops of a batch do not
depend on the prefetch depth or on where a resume started.)
"""

SPLIT = 0x5EED
CROP = 0xC0
JITTER = 0xC1
BATCH_TRANSFORM = 0xBA7C
DECODE_LIMIT_ORDER = 0xD0
DECODE_LIMIT_CROP = 0xD1
BLOCK_SHARDS = 0xB10C
BLOCK_RECORDS = 0xB10D
PACK_ORDER = 0x9AC0


def batch_rng(seed: int, epoch: int, first_position: int, stream: int):
    """The generator of ``stream`` (CROP or JITTER) for the batch whose first record sits at epoch
    position ``first_position``: the one key both the feed and ``loader show`` use."""
    import numpy as np

    return np.random.default_rng([seed, epoch, int(first_position), stream])
