"""Rules every file of a packed dataset obeys, in one place: nothing read leaves DST, a manifest is
read safely, one re-pack hint.

A packed dataset is one folder (DST). Its manifest names the other files, and every reader
(:mod:`loader.format.manifest`, :mod:`loader.format.columns`, :mod:`loader.format.dataset`)
opens a file only after :func:`check_inside` said it is in that folder: a ``manifest.json``,
``sources.bin``, column or shard that is a link to a file elsewhere is refused, so a
dataset someone hands over cannot make the loader read (and print in an error) a file of theirs.
A link to another file of the same folder is fine.

>>> check_inside(Path("photos.packed") / "sources.bin", "the file of source paths")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from loader.errors import DatasetError

__all__ = ["DIGEST_RE", "MAX_MANIFEST_BYTES", "REPACK_HINT", "add_shard_digests", "check_inside", "file_digest",
           "read_json", "write_manifest_json"]

#: What to do about a dataset that is damaged or was written by an incompatible release:
#: the tail of every such message (one home, so every message says the same).
REPACK_HINT = "re-pack with `loader pack SRC DST --overwrite`"
# Largest manifest.json read. Since version 3 it is a few KB (a line per shard); a version 1/2
# one lists every record (~150 bytes each): 1 GiB is ~7M records. Anything larger is not ours,
# and is refused before it is read into memory.
MAX_MANIFEST_BYTES = 1 << 30


def check_inside(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`DatasetError` if ``path`` (a file of a dataset folder) is a link that leads
    out of that folder; ``what`` says which file it is, for the message.

    A missing file passes (its reader says it is missing).
    """
    path = Path(path)
    if not path.is_symlink():
        return
    real = os.path.realpath(path)
    if os.path.dirname(real) != os.path.realpath(path.parent):
        raise DatasetError(f"{path}: {what} is a link to {real}, outside the dataset folder; copy the "
                           f"dataset with its files (cp -rL) or {REPACK_HINT}")


def read_json(path: str | os.PathLike) -> object:
    """The parsed JSON of a manifest file, read safely: at most :data:`MAX_MANIFEST_BYTES`, only a
    regular file inside its folder; any reason it is not JSON (bad syntax or encoding, nesting too
    deep, a number too long) is one :class:`DatasetError` line. Never changes interpreter limits."""
    path = Path(path)
    check_inside(path, "the manifest")
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise DatasetError(f"{path} is not a regular file; {REPACK_HINT}")
            if st.st_size > MAX_MANIFEST_BYTES:
                raise DatasetError(f"{path} is {st.st_size} bytes, more than any loader manifest "
                                   f"({MAX_MANIFEST_BYTES}); it is not one, {REPACK_HINT}")
            text = f.read(MAX_MANIFEST_BYTES + 1)  # bytes: a non-UTF-8 file is reported as invalid JSON
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise DatasetError(f"{path} grew past {MAX_MANIFEST_BYTES} bytes while being read; {REPACK_HINT}")
    try:
        return json.loads(text)
    except RecursionError:
        raise DatasetError(f"{path} nests lists or objects too deeply to be a loader manifest; "
                           f"{REPACK_HINT}") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); {REPACK_HINT}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); {REPACK_HINT}") from None
    except ValueError as e:   # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise DatasetError(f"{path} is not a loader manifest: it holds a number too long to read "
                           f"({str(e).split(';')[0]}); {REPACK_HINT}") from None


#: The form of a shard entry's ``digest`` in a manifest: SHA-256 over the whole shard file, so a shard
#: fetched from object storage is checked before use (a shard's records also carry CRC-32s, but those are
#: checked per record as read, after the file is already in use). SHA-256 runs at 1.69 GB/s here (the
#: CPU's SHA extensions) against BLAKE2b's 0.67, and a cold epoch hashes every byte it downloads; loader
#: 0.4.0's ``blake2b-128`` digests still verify.
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|blake2b-128:[0-9a-f]{32}")


def file_digest(path: str | os.PathLike) -> str:
    """The digest of a whole file as a manifest's shard entries record it (``sha256:<64 hex>``).

    >>> file_digest("photos.packed/shard-00000.lmdb")       # doctest: +SKIP
    'sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):     # streamed: shards are hundreds of MB
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def add_shard_digests(folder: str | os.PathLike, manifest_name: str = "manifest.json") -> None:
    """Record :func:`file_digest` of every shard in the (version 3+) manifest of the packed dataset
    being written in ``folder``: each shard entry gains ``"digest"``. The manifest keeps its layout
    (one header key a line) and is replaced atomically."""
    folder = Path(folder)
    path = folder / manifest_name
    obj = json.loads(path.read_bytes())
    for s in obj["shards"]:
        s["digest"] = file_digest(folder / s["name"])
    write_manifest_json(path, obj)


def write_manifest_json(path: str | os.PathLike, obj: dict) -> None:
    """Write a manifest header ``obj`` as pack does (one key a line, compact values), atomically."""
    path = Path(path)
    text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'), allow_nan=False)}"
                              for k, v in obj.items()) + "\n}\n"
    tmp = path.with_name(path.name + ".digests")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
