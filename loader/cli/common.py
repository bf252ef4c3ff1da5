"""What several commands share: sizes lists, output files, ``--json``, Ctrl-C with partial results, safe printing."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from loader.errors import ArgumentError, LoaderError

__all__ = ["check_output_files", "emit_json", "parse_sizes", "printable_streams", "report_stream",
           "run_interrupted_reports"]

T = TypeVar("T")


def parse_sizes(text: str, option: str) -> tuple[int, ...]:
    """``"16,32,64"`` -> ``(16, 32, 64)``, de-duplicated in order; not a list of integers raises ArgumentError.

    ``option`` names the list in the message: a parameter name (``"batch_sizes"``: the CLI
    shows the flag) or a flag. Whether the values are in range is the settings' to say
    (:class:`loader.bench.BenchSettings`, :class:`loader.advisor.AdviseSettings`).

    >>> parse_sizes("64, 128,64", "batch_sizes")
    (64, 128)
    """
    try:
        sizes = tuple(int(p.strip()) for p in str(text).split(","))
    except ValueError:
        raise ArgumentError(f"{option} must be comma-separated positive integers, got {text!r}",
                            param=None if option.startswith("-") else option) from None
    return tuple(dict.fromkeys(sizes))


def check_output_files(files: dict[str, str | None]) -> None:
    """Before a long run: every ``{flag: path}`` given must be writable where it points (``-`` = stdout).

    Raises LoaderError naming the flag, so a typo in the folder costs no measurement.
    """
    for flag, path in files.items():
        if path is None or (path == "-" and flag == "--json"):
            continue
        if path == "-":
            raise LoaderError(f"{flag} needs a file name, got '-' (only --json can write to stdout)")
        folder = Path(path).resolve().parent
        if not folder.is_dir():
            raise LoaderError(f"{flag} {path}: cannot write there, folder {Path(path).parent} does not exist")


def report_stream(json_target: str | None) -> TextIO:
    """Where the text report goes: stdout, or stderr when ``--json -`` gives stdout to the JSON."""
    return sys.stderr if json_target == "-" else sys.stdout


def emit_json(target: str | None, data: Any) -> None:
    """Write ``data`` as indented JSON to ``target``: a file, ``-`` = stdout, None = nowhere."""
    if target is None:
        return
    text = json.dumps(data, indent=2) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(target).write_text(text)


def run_interrupted_reports(run: Callable[[], T], report: Callable[[T], None], interrupted: type[BaseException],
                            partial: Callable[[Any], T]) -> int:
    """``report(run())`` and exit status 0; on Ctrl-C (``interrupted``, raised by the run with what it had
    measured) report ``partial(exception)`` after a note on stderr, and exit status 130.

    One Ctrl-C behaviour for ``bench`` and ``advise``: the rows so far are printed and
    written as if the run had ended there.
    """
    try:
        result = run()
    except interrupted as e:
        print("interrupted: results so far", file=sys.stderr)
        report(partial(e))
        return 130
    report(result)
    return 0


@contextlib.contextmanager
def printable_streams() -> Iterator[None]:
    """For the command's duration, text that the terminal's encoding cannot carry is printed escaped.

    A file name that is not UTF-8 (``b"\\xff.jpg"`` reads as ``"\\udcff.jpg"``) would raise
    UnicodeEncodeError on a strict UTF-8 stdout; with ``backslashreplace`` it prints as
    ``\\udcff.jpg``. The streams' error handler is restored afterwards: a host that calls
    :func:`loader.cli.main` keeps its own settings.
    """
    saved = []
    for stream in (sys.stdout, sys.stderr):
        # "strict" only: surrogateescape (a C locale) already writes a name's own bytes back.
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):        # closed, or not reconfigurable: leave it alone
                continue
            saved.append(stream)
    try:
        yield
    finally:
        for stream in saved:
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="strict")
