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
>>> items[:2]  # doctest: +SKIP
[('cat/001.jpg', 0), ('cat/nested/002.jpg', 0)]
"""

from __future__ import annotations

import os
from pathlib import Path

from loader.errors import PackError

__all__ = ["scan"]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_files(top: str, rel: str, seen: set[tuple[int, int]]) -> list[str]:
    """Relative posix paths of the non-hidden regular files under ``top``."""
    st = os.stat(top)
    key = (st.st_dev, st.st_ino)
    if key in seen:  # a symlink back to a folder we are already in
        return []
    seen.add(key)
    found = []
    with os.scandir(top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if _is_hidden(e.name):
            continue
        child = f"{rel}/{e.name}"
        try:
            if e.is_dir():  # follows symlinks
                found.extend(_walk_files(e.path, child, seen))
            elif e.is_file():
                found.append(child)
        except OSError:  # dangling symlink, permission race: not a file we can read
            continue
    return found


def class_folders(src: str | os.PathLike) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``src``.

    >>> class_folders("photos/")                         # doctest: +SKIP
    ['cat', 'dog']
    """
    with os.scandir(src) as it:
        return sorted(e.name for e in it if not _is_hidden(e.name) and e.is_dir())


def scan(src: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """Return ``(classes, items)`` for the image folder ``src``.

    ``items`` holds ``(relpath, label)`` with ``relpath`` relative to ``src``
    using ``/`` separators, sorted by ``(label, relpath)``.

    Raises :class:`PackError` if ``src`` is missing, not a folder, has no class
    folders, or its class folders hold no files at all.
    """
    path = Path(src)
    if not path.exists():
        raise PackError(f"{path} does not exist; pass an image folder (one sub-folder per class) as SRC")
    if not path.is_dir():
        raise PackError(f"{path} is not a folder; pass an image folder (one sub-folder per class) as SRC")
    try:
        classes = class_folders(path)
    except OSError as e:
        raise PackError(f"cannot list {path}: {e.strerror or e}") from None
    if not classes:
        raise PackError(f"{path} has no class folders; put each class's images in its own "
                        f"sub-folder, e.g. {path}/cat/001.jpg")
    items: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        try:
            files = _walk_files(os.path.join(path, name), name, set())
        except OSError as e:
            raise PackError(f"cannot list {path / name}: {e.strerror or e}") from None
        items.extend((f, label) for f in sorted(files))
    if not items:
        raise PackError(f"{path} has class folders ({', '.join(classes[:5])}"
                        f"{', ...' if len(classes) > 5 else ''}) but no files in them; "
                        f"put the images inside the class folders")
    return classes, items
