"""Stage 1 of ``pack``: list the candidate images of an image folder.

Layout (as torchvision's ``ImageFolder``): one sub-folder per class; the class
order, and so the label of each class, is the sorted order of the folder names.

* Files nested deeper inside a class folder count for that class.
* Files directly in SRC are ignored (they belong to no class).
* Hidden files and folders (name starting with ``.``) are ignored.
* Every other regular file is a candidate image: files that turn out not to be
  images are reported as bad by the checker, never silently dropped.
* Symlinks are followed (as ``ImageFolder`` does); a folder already visited is
  not entered again, so symlink loops cannot hang the scan.
* Items are sorted by ``(label, relpath)``: the result never depends on the
  order in which the file system lists entries.

>>> classes, items = scan("photos/")                     # doctest: +SKIP
>>> classes  # doctest: +SKIP
['cat', 'dog']
>>> items[0], len(items)  # doctest: +SKIP
(('cat/001.jpg', 0), 3000)

``scan(src, classes=[...])`` pins the class list and order (``pack --classes`` /
``--classes-from``): every class folder must be in it, and a class without a folder gets no
items. :func:`scan_unlabeled` (``pack --unlabeled``) lists every file under SRC, files
directly in it included, sorted by path, with label -1; :func:`iter_files` is that walk
(``pack --labels`` uses it to count the files the labels file leaves out).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from loader.errors import PackError

__all__ = ["Items", "check_src", "iter_files", "scan", "scan_unlabeled"]


class Items(Sequence):
    """``(relpath, label)`` pairs, compact: the paths as one UTF-8 blob (surrogate escapes for
    undecodable names) with end offsets, the labels as an int32 array.

    A list of tuples cost pack's parent ~165 MB at 1.281M files, held for the whole pack;
    this is ~25 MB of paths plus 12 bytes per file.

    >>> items = Items.build([("a/1.jpg", 0), ("b/2.jpg", 1)])
    >>> items[1], len(items), list(items) == [("a/1.jpg", 0), ("b/2.jpg", 1)]
    (('b/2.jpg', 1), 2, True)
    """

    def __init__(self, blob: bytes, ends: np.ndarray, labels: np.ndarray):
        self._blob, self._ends, self.labels = blob, ends, labels

    @classmethod
    def build(cls, pairs) -> Items:
        """From an iterable of ``(relpath, label)``."""
        blob, ends, labels = bytearray(), [], []
        for rel, label in pairs:
            blob += rel.encode("utf-8", "surrogateescape")
            ends.append(len(blob))
            labels.append(label)
        return cls(bytes(blob), np.array(ends, dtype=np.int64), np.array(labels, dtype=np.int32))

    def __len__(self) -> int:
        return len(self.labels)

    def relpath(self, j: int) -> str:
        """The ``j``-th relative path."""
        a = int(self._ends[j - 1]) if j else 0
        return self._blob[a:int(self._ends[j])].decode("utf-8", "surrogateescape")

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        if not -len(self) <= j < len(self):
            raise IndexError(j)
        j %= len(self)
        return self.relpath(j), int(self.labels[j])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        a = 0
        for end, label in zip(self._ends.tolist(), self.labels.tolist()):
            yield self._blob[a:end].decode("utf-8", "surrogateescape"), label
            a = end

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (Sequence, Items)) and list(self) == list(other)

    __hash__ = None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def class_folders(src: str | os.PathLike) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``src``.

    >>> class_folders("photos/")                         # doctest: +SKIP
    ['cat', 'dog']
    """
    with os.scandir(src) as it:
        return sorted(e.name for e in it if not _is_hidden(e.name) and e.is_dir())


def check_src(src: str | os.PathLike, what: str = "an image folder (one sub-folder per class)") -> Path:
    """``src`` as a Path; :class:`PackError` if it is missing or not a folder."""
    path = Path(src)
    if not path.exists():
        raise PackError(f"{path} does not exist; pass {what} as SRC")
    if not path.is_dir():
        raise PackError(f"{path} is not a folder; pass {what} as SRC")
    return path


def scan(src: str | os.PathLike, classes: Sequence[str] | None = None) -> tuple[list[str], Items]:
    """Return ``(classes, items)`` for the image folder ``src``.

    ``items`` (:class:`Items`) holds ``(relpath, label)`` with ``relpath`` relative
    to ``src`` using ``/`` separators, sorted by ``(label, relpath)``.

    ``classes``: the class list, in label order, instead of the sorted folder names; every
    class folder must be in it (classes without a folder are allowed: they get no items).

    Raises :class:`PackError` if ``src`` is missing, not a folder, has no class
    folders, has a folder not in ``classes``, or its class folders hold no files at all.
    """
    path = check_src(src)
    try:
        folders = class_folders(path)
    except OSError as e:
        raise PackError(f"cannot list {path}: {e.strerror or e}") from None
    if not folders:
        raise PackError(f"{path} has no class folders; put each class's images in its own "
                        f"sub-folder, e.g. {path}/cat/001.jpg")
    if classes is None:
        classes = folders
        order = list(enumerate(folders))
    else:
        classes = list(classes)
        index = {c: i for i, c in enumerate(classes)}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise PackError(f"class folder {unknown[0]!r} of {path} is not in the given classes "
                            f"({len(classes)}); add it to the classes or move it out of SRC")
        present = set(folders)
        order = [(i, c) for i, c in enumerate(classes) if c in present]

    def pairs():
        for label, name in order:   # one class's file list at a time
            files = [f"{name}/{rel}" for rel, _ in iter_files(os.path.join(path, name))]
            yield from ((f, label) for f in sorted(files))

    items = Items.build(pairs())
    if not len(items):
        raise PackError(f"{path} has class folders ({', '.join(folders[:5])}"
                        f"{', ...' if len(folders) > 5 else ''}) but no files in them; "
                        f"put the images inside the class folders")
    return list(classes), items


def _sort_key(e: os.DirEntry) -> str:
    # A folder sorts as "name/": then a depth-first walk yields relpaths in sorted string order.
    try:
        return e.name + "/" if e.is_dir() else e.name
    except OSError:
        return e.name


def iter_files(src: str | os.PathLike) -> Iterator[tuple[str, bool]]:
    """``(relpath, inside)`` for every non-hidden regular file under ``src``, recursively, files
    directly in ``src`` included, in sorted ``relpath`` order (``/`` separators). Symlinks are
    followed and each folder is entered once (loops are safe); ``inside`` is False for a file
    whose resolved path lies outside ``src`` (reached through a symlink). One folder's entries
    are held at a time, never the whole list.

    Raises :class:`PackError` if a folder cannot be listed.
    """
    root = os.path.realpath(src)
    seen: set[tuple[int, int]] = set()

    def is_inside(p: str) -> bool:
        real = os.path.realpath(p)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def walk(top: str, rel: str, inside: bool) -> Iterator[tuple[str, bool]]:
        try:
            st = os.stat(top)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(top) as it:
                entries = sorted((e for e in it if not _is_hidden(e.name)), key=_sort_key)
        except OSError as e:
            raise PackError(f"cannot list {top}: {e.strerror or e}") from None
        for e in entries:
            child = f"{rel}{e.name}"
            try:
                link = e.is_symlink()
                here = is_inside(e.path) if link else inside
                if e.is_dir():
                    yield from walk(e.path, child + "/", here)
                elif e.is_file():
                    yield child, here
            except OSError:   # dangling symlink, permission race: not a file we can read
                continue

    return walk(os.fspath(src), "", True)


def scan_unlabeled(src: str | os.PathLike) -> Items:
    """Every file :func:`iter_files` finds under ``src``, sorted by relpath, each with label -1.

    Raises :class:`PackError` if ``src`` is missing, not a folder, or holds no files.
    """
    path = check_src(src, "a folder of images")
    items = Items.build((rel, -1) for rel, _ in iter_files(path))
    if not len(items):
        raise PackError(f"{path} holds no files (hidden ones are ignored); put the images in it")
    return items
