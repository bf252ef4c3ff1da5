"""``python scripts/make_dataset.py DST [--classes N] [--per-class N] [--seed S]``: see :mod:`loader.synthetic`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loader.synthetic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
