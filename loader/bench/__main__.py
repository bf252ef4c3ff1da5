"""``python -m loader.bench SRC ...``: the same as ``loader bench SRC ...``."""

import sys

from loader.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
