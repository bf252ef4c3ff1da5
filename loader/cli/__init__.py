"""Command line: ``loader pack | info | verify | bench | advise | doctor | show``.

User errors (bad input, bad dataset, bad option values) print one line,
``error: <message>``, and exit with status 2 -- no traceback; where the
library's message names a Python parameter, the line names its flag
(:mod:`loader.cli.flags`). ``verify`` exits with 1 when it finds bad records.
Ctrl-C exits with 130. ``--json FILE`` writes JSON in every command that has
it; ``--json -`` writes it to stdout and the text report to stderr.

    loader pack photos/ photos.packed --max-side 512
    loader info photos.packed --json -
    loader verify photos.packed

The commands live in :mod:`loader.cli.data` (pack, info, verify) and
:mod:`loader.cli.measure` (bench, advise, doctor), :mod:`loader.cli.show`; what they share in
:mod:`loader.cli.common` and :mod:`loader.cli.flags`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from loader.cli.common import parse_sizes, printable_streams
from loader.cli.data import add_info, add_pack, add_verify, dataset_info
from loader.cli.flags import command_parsers, name_flags, param_flags
from loader.cli.measure import add_advise, add_bench, add_doctor
from loader.cli.show import add_show
from loader.errors import LoaderError, one_line

__all__ = ["build_parser", "dataset_info", "main", "parse_sizes"]


def build_parser() -> argparse.ArgumentParser:
    """The ``loader`` argument parser."""
    from loader.version import __version__

    parser = argparse.ArgumentParser(
        prog="loader", description="Pack image folders into LMDB shards and check them; "
        "load them for PyTorch with loader.ImageLoader (NVIDIA DALI).")
    parser.add_argument("--version", action="version", version=f"loader {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_pack(sub)
    add_info(sub)
    add_verify(sub)
    add_bench(sub)
    add_advise(sub)
    add_doctor(sub)
    add_show(sub)
    return parser


def _error_line(e: LoaderError, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The ``error: ...`` line: one line, the parameters it names shown as the flags the user typed."""
    flags = param_flags(command_parsers(parser)[args.command])
    flags.update(getattr(args, "_spelled", {}))        # an old spelling, if that is what was typed
    return f"error: {name_flags(one_line(e), getattr(e, 'param', None), flags)}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status.

    >>> main(["info", "photos.packed", "--json", "-"])          # doctest: +SKIP
    0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    with printable_streams():
        try:
            parser = build_parser()
            try:
                args = parser.parse_args(argv)
            except SystemExit as e:  # --help, --version, usage errors (status 2)
                return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
            func: Callable[[argparse.Namespace], int] = args.func
            try:
                return int(func(args) or 0)
            except LoaderError as e:
                print(_error_line(e, parser, args), file=sys.stderr)
                return 2
        except LoaderError as e:     # building the parser: e.g. a broken install
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. `loader info DST | head`
            sys.stdout = open(os.devnull, "w")  # silence the flush at exit
            return 1
