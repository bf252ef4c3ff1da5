"""The type tests every settings object uses: one home, so ``True`` is refused as a batch size everywhere.

Each settings object (``ImageLoader``'s :mod:`loader.load.settings`, pack's
:mod:`loader.convert.options`, ``Augment``, ``BenchSettings``/``AdviseSettings`` through
:mod:`loader.measure`, ``run_doctor``, ``loader show``) checks its own ranges and names its own
parameters; what "an integer" and "a number" mean is decided here.
"""

from __future__ import annotations

import numbers

__all__ = ["is_int", "is_number"]


def is_int(v) -> bool:
    """An integer (Python or numpy) but not a ``bool``: ``True`` is not a batch size.

    >>> import numpy as np
    >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(3.0)
    (True, True, False, False)
    """
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A real number (int or float, numpy's too) that is not a ``bool``; NaN and infinity included
    (range checks reject them).

    >>> is_number(0.5), is_number(2), is_number(False), is_number("1")
    (True, True, False, False)
    """
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
