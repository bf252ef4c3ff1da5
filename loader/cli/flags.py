"""The command line's flags in one place: what each shared flag means, renamed spellings, parameter -> flag.

* :data:`SHARED` -- every flag that more than one command has, with the one meaning
  (the first words of its help) and metavar it has in all of them. ``--json FILE``
  everywhere (``-`` = stdout); ``--batch-size`` / ``--image-size`` take one value, or
  a comma-separated list where the command sweeps (the help says which).
* :data:`RENAMED` -- old spellings, accepted as hidden aliases for one release with a
  note on stderr.
* :func:`param_flags` -- a command's Python parameter -> flag map, read off its parser
  (argparse's ``dest`` is the parameter name) plus :data:`NOT_DEST`; :func:`name_flags`
  puts the flag where a library message names the parameter, so a command-line user
  reads ``--shard-size-mb`` where a Python user reads ``shard_size_mb``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["NOT_DEST", "RENAMED", "SHARED", "Flag", "JsonTarget", "add_renamed", "add_shared", "command_parsers",
           "name_flags", "param_flags"]


@dataclass(frozen=True)
class Flag:
    """A flag's ``meaning`` (how its help begins, in every command) and ``metavar`` (None: a switch)."""

    meaning: str
    metavar: str | None


# Flags that several commands have: one meaning each. tests/test_cli_flags.py checks every command's
# parser against this table (a flag in two commands must be here; its help starts with the meaning).
SHARED: dict[str, Flag] = {
    "--json": Flag("write the result as JSON to FILE; FILE '-' = stdout, which then carries only the JSON "
                   "(the text report goes to stderr)", "FILE"),
    "--plot": Flag("write a PNG plot to FILE.png (needs matplotlib: pip install 'loader[bench]')", "FILE.png"),
    "--quiet": Flag("no progress output", None),
    "--batch-size": Flag("batch size", "N"),
    "--image-size": Flag("output size in pixels (square images), >= 8", "PX"),
    "--batches": Flag("batches each measurement loads", "N"),
    "--warmup": Flag("untimed batches before each measurement", "N"),
    "--rounds": Flag("rounds of measurements, round-robin over what is compared (each once, then each again); "
                     "the median is reported", "N"),
    "--threads": Flag("DALI threads", "N"),
    "--prefetch": Flag("ImageLoader's prefetch depth in batches, >= 1", "N"),
    "--device": Flag("where ImageLoader decodes: auto, cpu, cuda, cuda:N (auto = CUDA if available)", "DEVICE"),
    "--seed": Flag("random seed, >= 0", "N"),
    "--memory-budget": Flag("memory budget in MB (10^6 bytes, as every MB figure printed)", "MB"),
    "--eval": Flag("the eval pipeline (resize + centre crop, every record in order) instead of train's", None),
    "--eval-mode": Flag("ImageLoader's eval_mode: fast (the centre window resized) or torchvision "
                        "(torchvision's Resize + CenterCrop pixels exactly)", "MODE"),
    "--color-jitter": Flag("training colour jitter, brightness = contrast = saturation = J", "J"),
}

# (command, old spelling) -> the flag it became. Hidden aliases until loader 0.5.
RENAMED: dict[tuple[str, str], str] = {
    ("bench", "--batch-sizes"): "--batch-size",
    ("bench", "--image-sizes"): "--image-size",
    ("bench", "--workers"): "--dataloader-workers",       # pack's --workers are pack's own processes
    ("bench", "--repeats"): "--rounds",                   # advise's --repeats are repeats within a round
    ("advise", "--batch-sizes"): "--batch-size",
}
REMOVED_IN = "0.5"

# Library parameters whose flag is not the one with that dest (the CLI turns the flag's value around).
NOT_DEST: dict[str, str] = {"progress": "--quiet", "train": "--eval", "decode": "--no-decode"}


def sweep_metavar(metavar: str) -> str:
    """``"N"`` -> ``"N[,N...]"``: the metavar of a flag that takes one value or a comma-separated list."""
    return f"{metavar}[,{metavar}...]"


def add_shared(p: argparse.ArgumentParser, flag: str, detail: str = "", *, sweep: bool = False,
               **kwargs) -> argparse.Action:
    """Add the :data:`SHARED` ``flag`` to ``p``: its help is the table's meaning, then this command's ``detail``.

    ``sweep``: the flag takes one value or a comma-separated list (the help says so).
    Other keyword arguments go to ``add_argument`` (``dest`` = the library's parameter name).
    """
    f = SHARED[flag]
    help_text = f.meaning
    if sweep:
        help_text += "; one, or a comma-separated list to sweep"
    if detail:
        help_text += f" {detail}" if detail.startswith("(") else f"; {detail}"
    if f.metavar is None:
        kwargs.setdefault("action", "store_true")
    else:
        kwargs.setdefault("metavar", sweep_metavar(f.metavar) if sweep else f.metavar)
    return p.add_argument(flag, help=help_text, **kwargs)


class _Renamed(argparse.Action):
    """An old spelling: stores into the new flag's dest and says, once, on stderr, what to type instead."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        said = getattr(namespace, "_renamed_said", set())
        if option_string not in said:
            print(f"note: {option_string} is deprecated and will be removed in loader {REMOVED_IN}; "
                  f"use {self.new}", file=sys.stderr)
            namespace._renamed_said = said | {option_string}
        spelled = dict(getattr(namespace, "_spelled", {}))
        spelled[self.dest] = option_string
        namespace._spelled = spelled          # an error about this parameter names what the user typed
        setattr(namespace, self.dest, values)


class JsonTarget(argparse.Action):
    """``--json`` that also takes no FILE, as ``loader info --json`` did before 0.4: stdout, with a note."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            print(f"note: {option_string} without FILE is deprecated and will need one from loader {REMOVED_IN}; "
                  f"use {option_string} - for stdout", file=sys.stderr)
            values = "-"
        setattr(namespace, self.dest, values)


def add_renamed(p: argparse.ArgumentParser, command: str) -> None:
    """Add ``command``'s old spellings (:data:`RENAMED`) to ``p`` as hidden aliases of the flags they became."""
    for (cmd, old), new in RENAMED.items():
        if cmd != command:
            continue
        target = p._option_string_actions[new]
        p.add_argument(old, dest=target.dest, type=target.type, nargs=target.nargs, metavar=target.metavar,
                       action=_Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """command name -> its sub-parser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def param_flags(p: argparse.ArgumentParser) -> dict[str, str]:
    """A command's Python parameter -> how a command-line user names it (``--flag``, or ``DST`` for a positional).

    Read off the parser: an argument's ``dest`` is the parameter it feeds; hidden
    aliases are skipped; :data:`NOT_DEST` adds the parameters a flag feeds turned around.
    """
    out: dict[str, str] = {}
    for a in p._actions:
        if a.help == argparse.SUPPRESS or a.dest in (argparse.SUPPRESS, "help"):
            continue
        if a.option_strings:
            out.setdefault(a.dest, max(a.option_strings, key=len))
        else:
            out.setdefault(a.dest, a.metavar if isinstance(a.metavar, str) else a.dest.upper())
    flags = set(out.values())
    out.update({param: flag for param, flag in NOT_DEST.items() if flag in flags and param not in out})
    return out


def name_flags(message: str, param: str | None, flags: Mapping[str, str]) -> str:
    """``message`` with the parameter names a command-line user does not know replaced by their flags.

    ``param`` (the parameter the error is about) is replaced where it leads the
    message, where it is quoted in backticks, and anywhere if it is an identifier
    (has an underscore); any other of ``flags``' parameters only in backticks (a
    bare word like ``workers`` may be prose).

    >>> name_flags("shard_size_mb must be > 0, got -1", "shard_size_mb", {"shard_size_mb": "--shard-size-mb"})
    '--shard-size-mb must be > 0, got -1'
    >>> name_flags("seed must be an int; `shards` too", "seed", {"seed": "--seed", "shards": "--shards"})
    '--seed must be an int; --shards too'
    """
    def sub(pattern: str, flag: str, text: str) -> str:
        return re.sub(pattern, lambda _m: flag, text)

    for other, flag in flags.items():
        message = sub(rf"`{re.escape(other)}`", flag, message)
    if param is None or param not in flags:
        return message
    flag, name = flags[param], re.escape(param)
    if "_" in param:
        return sub(rf"(?<![\w.-]){name}(?![\w-])", flag, message)
    return sub(rf"^{name}(?![\w-])", flag, message)
