"""Measure training-input throughput: ImageLoader against the standard DataLoader.

    loader bench photos/ [--packed photos.packed] [--batch-size 32,64,128] [--image-size 224]

Every contender runs the same training pipeline (decode, random-resized-crop to
the image size, horizontal flip, normalize to float32 CHW, batches with int64
labels) -- or, with ``--eval``, resize + centre crop in order:

* ``loader``          -- :class:`loader.ImageLoader` on the packed shards (DALI);
* ``dataloader``      -- ``torch.utils.data.DataLoader`` over the original files with
                         torchvision-style PIL transforms;
* ``dataloader-lmdb`` -- the same DataLoader reading the packed shards;
* ``decode-limit``    -- DALI's region decode alone: the ceiling.

A packed dataset at a URL (``loader bench s3://.../photos.packed``, or an image folder
with ``--packed s3://...``) adds ``loader (cold cache)`` and ``loader (warm cache)``:
ImageLoader reading the URL through the node-local cache, from an empty cache and from a
filled one, beside ``loader`` on a downloaded local copy (``--cache-dir``, ``--cache-limit``).

The pieces, one job per module: :mod:`~loader.bench.source` (what SRC is; pack
it once), :mod:`~loader.bench.contenders` (the pipelines, from one frozen
:class:`ContenderSpec`; :mod:`~loader.bench.baseline` and
:mod:`~loader.bench.decode_limit` beside them), :mod:`~loader.bench.remote` (the cache
rows' temporary caches and their sampling), :mod:`~loader.bench.harness`
(the settings and the round-robin race), :mod:`~loader.bench.procstat`
(``/proc``: waiting for idle), :mod:`~loader.bench.results` (:class:`BenchRow`,
the JSON schema), :mod:`~loader.bench.recommend` and :mod:`~loader.bench.report`.
The clock, RSS sampling, device resolution, table layout and the settings'
shared validation are :mod:`loader.measure`'s, shared with ``loader advise``
(``Timing``, ``time_steps``, ``batch_bytes`` and ``text_table`` are re-exported
here). The command line (argparse) is in :mod:`loader.cli`.

>>> rows = bench("photos/", BenchSettings(batch_sizes=(64, 128)))   # doctest: +SKIP
>>> print(format_table(rows))                                      # doctest: +SKIP
"""

from loader.bench.contenders import CONTENDERS, ContenderSpec, make_contender
from loader.bench.harness import BenchInterrupted, BenchSettings, Timing, bench, time_steps
from loader.bench.recommend import Recommendation, batch_bytes, recommend_batch_size
from loader.bench.report import format_table, print_report, text_table, write_json, write_plot
from loader.bench.results import BenchRow
from loader.bench.source import CACHE_SUFFIX, resolve_source

__all__ = [
    "CACHE_SUFFIX", "CONTENDERS", "BenchInterrupted", "BenchRow", "BenchSettings", "ContenderSpec",
    "Recommendation", "Timing", "batch_bytes", "bench", "format_table", "make_contender", "print_report",
    "recommend_batch_size", "resolve_source", "text_table", "time_steps", "write_json", "write_plot",
]
