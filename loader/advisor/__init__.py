"""Choose the batch size with your own model in the loop: ``loader advise DST --model MODULE:CALLABLE``.

For each batch size (and image size) it measures the model's train step on
one reused batch (step ms, images/s), ``ImageLoader`` alone, the training loop
fed by ``ImageLoader`` (images/s and the share of time waiting for data) and
the peak memory; out of memory or over the budget is a row that says so, not
a crash. Each row is measured in ``rounds`` rounds (default 3), round-robin
over the rows, and reported as the median with its range, so one busy spell
of a shared machine cannot decide the advice; when the ranges overlap more
than the choice allows, the advice says so instead of picking. Then it
recommends: the largest batch that fits, the smallest whose end-to-end
throughput is within 5% of the best, whether training is input-bound and
what to try, and the linearly scaled learning rate. With ``trial_images`` it
trains a fresh copy of the model per batch size on the
same number of images and validates it on a held-back split.

>>> import loader
>>> result = loader.advise("photos.packed", model="torchvision.models:resnet50",   # doctest: +SKIP
...                        batch_sizes=(32, 64, 128), trial_images=20000)
>>> result.recommendation.batch_size, result.to_dict()["rows"][0]["status"]        # doctest: +SKIP
(64, 'ok')

``loader.advise(...)`` is :func:`loader.advisor.sweep.advise` (this package's
``advise``). The pieces, one job per module:
:mod:`~loader.advisor.modelspec` (import and check ``MODULE:CALLABLE``),
:mod:`~loader.advisor.settings` (:class:`AdviseSettings`),
:mod:`~loader.advisor.training` (the one train step),
:mod:`~loader.advisor.measure` (a row), :mod:`~loader.advisor.trial`,
:mod:`~loader.advisor.recommend`, :mod:`~loader.advisor.results` (the frozen
dataclasses; ``to_dict()`` is the JSON schema), :mod:`~loader.advisor.report`
(table, JSON, plot) and :mod:`~loader.advisor.sweep` (the run). The guide:
docs/advise.md; the command line: ``loader advise --help``.
"""

from loader.advisor.modelspec import ModelSpecError
from loader.advisor.report import format_table, print_result, write_json, write_plot
from loader.advisor.results import AdviceRecommendation, AdviseResult, AdviseRow, TrialResult
from loader.advisor.settings import AdviseSettings
from loader.advisor.sweep import AdviseInterrupted, advise

__all__ = ["AdviceRecommendation", "AdviseInterrupted", "AdviseResult", "AdviseRow", "AdviseSettings",
           "ModelSpecError", "TrialResult", "advise", "format_table", "print_result", "write_json", "write_plot"]

