"""pack's destination: check DST, work in a marked temporary folder beside it, install it atomically.

Killed at any point, pack loses nothing that was at DST: everything is written next to DST
and renamed into place only when complete. ``overwrite`` replaces only a folder that is
provably a packed dataset (:func:`check_dst`), moves it aside (``DST.old-<pid>-<token>``),
renames the new one in, and deletes the old one last. Killed between those two renames,
DST is missing for a moment: the next pack to DST (or ``loader info`` telling where) finds
the old dataset and moves it back before doing anything else, with a warning.

Every temporary folder pack makes is marked twice: a name no user picks
(``DST.partial-<pid>-<16 hex>`` / ``DST.old-<pid>-<16 hex>``) and an empty marker file inside
whose name repeats kind, pid and token (``.loader-pack-temp-partial-<pid>-<16 hex>``; empty, so it
changes no size pack reports). Folders left by killed packs
are removed (or recovered) only when both match; anything else beside DST is the user's and
stays untouched, whatever its name.

Tests kill pack with a real SIGKILL between the steps of :func:`install`: set the
environment variable ``LOADER_FAULT=install:<point>`` (``before-first-rename``,
``after-first-rename``, ``after-second-rename``); nothing else reads it.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import secrets
import shutil
import signal
import warnings
from pathlib import Path

import lmdb

from loader.errors import DatasetError, PackError
from loader.format.files import read_json
from loader.format.manifest import FORMAT, MANIFEST_NAME, is_dataset_file_name
from loader.format.shards import lmdb_needs_bytes
from loader.units import MB

__all__ = ["MARKER_PREFIX", "check_dst", "install", "make_partial", "mount_point", "remove_stale", "write_error"]

#: How the marker file inside each temporary folder of pack starts (see the module docstring).
MARKER_PREFIX = ".loader-pack-temp-"
_SUFFIX = re.compile(r"\.(partial|old)-(\d+)-([0-9a-f]{16})")


def _fault(point: str) -> None:
    """Die here with SIGKILL if the tests ask for it (``LOADER_FAULT=install:<point>``)."""
    if os.environ.get("LOADER_FAULT") == f"install:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _marker(folder: Path, kind: str, pid: int, token: str) -> Path:
    return folder / f"{MARKER_PREFIX}{kind}-{pid}-{token}"


def _write_marker(folder: Path, kind: str, pid: int, token: str) -> None:
    with open(_marker(folder, kind, pid, token), "x") as f:
        os.fsync(f.fileno())


def _remove_marker(folder: Path, kind: str, pid: int, token: str) -> None:
    try:
        os.remove(_marker(folder, kind, pid, token))
    except OSError:    # gone already; a marker left in DST is harmless (readers ignore it)
        pass


def _ours(folder: Path, dst: Path) -> tuple[str, int, str] | None:
    """``(kind, pid, token)`` if ``folder`` is a temporary folder pack made for ``dst`` (its name
    and its marker agree), else None: then it is not ours to touch."""
    m = _SUFFIX.fullmatch(folder.name[len(dst.name):]) if folder.name.startswith(dst.name) else None
    if m is None or folder.is_symlink() or not folder.is_dir():
        return None
    kind, pid, token = m.group(1), int(m.group(2)), m.group(3)
    marker = _marker(folder, kind, pid, token)
    return (kind, pid, token) if marker.is_file() and not marker.is_symlink() else None


def _temporaries(dst: Path) -> list[tuple[Path, str, int, str]]:
    """Our temporary folders beside ``dst`` left by packs no longer running: ``(path, kind, pid, token)``."""
    found = []
    for p in sorted(glob.glob(glob.escape(str(dst)) + ".partial-*") + glob.glob(glob.escape(str(dst)) + ".old-*")):
        got = _ours(Path(p), dst)
        if got is not None and got[1] != os.getpid() and not _pid_alive(got[1]):
            found.append((Path(p), *got))
    return found


def _why_not_a_dataset(dst: Path) -> str | None:
    """Why the folder ``dst`` is not provably a packed dataset (so ``overwrite`` must not delete
    it), or None if it is one (or empty). Provably: every entry is a file pack writes, and its
    manifest is ours, or (a damaged manifest) a shard is an LMDB file."""
    try:
        entries = sorted(os.scandir(dst), key=lambda e: e.name)
    except OSError as e:
        return f"cannot list it: {e.strerror or e}"
    for e in entries:
        if not (is_dataset_file_name(e.name) or e.name.startswith(MARKER_PREFIX)):
            return f"it holds {e.name!r}, which pack does not write"
        if e.is_dir(follow_symlinks=False):
            return f"{e.name} is a folder"
    names = {e.name for e in entries}
    if not names:
        return None
    if MANIFEST_NAME not in names:
        return f"it has no {MANIFEST_NAME}"
    try:
        header = read_json(dst / MANIFEST_NAME)
    except (DatasetError, OSError):
        header = None
    if isinstance(header, dict) and header.get("format") == FORMAT:
        return None
    if header is not None:
        return f"its {MANIFEST_NAME} is not a loader manifest"
    for name in sorted(names):   # a damaged manifest: ours if a shard is an LMDB file
        if name.endswith(".lmdb"):
            try:
                if lmdb_needs_bytes(dst / name) is not None:
                    return None
            except OSError:
                pass
    return f"its {MANIFEST_NAME} is not a loader manifest"


def _recover(dst: Path) -> None:
    """If DST is missing and a killed ``pack --overwrite`` left the previous dataset beside it,
    move that back to DST (warning where it was)."""
    if dst.exists() or dst.is_symlink():
        return
    olds = [(p.stat().st_mtime, p, pid, token) for p, kind, pid, token in _temporaries(dst) if kind == "old"]
    if not olds:
        return
    _, old, pid, token = max(olds)     # the newest: the dataset DST held last
    os.rename(old, dst)
    _remove_marker(dst, "old", pid, token)
    warnings.warn(f"loader: {dst} was missing: a pack killed while replacing it had left the previous "
                  f"dataset in {old}; moved it back to {dst}", RuntimeWarning, stacklevel=4)


def remove_stale(dst: Path) -> None:
    """Delete what killed packs left beside ``dst``: their partial folders, and an old dataset
    they had moved aside once DST holds a packed dataset again. Only folders marked as ours
    (module docstring); nothing else, whatever its name."""
    for path, kind, _pid, _token in _temporaries(dst):
        if kind == "partial" or (dst.is_dir() and not dst.is_symlink() and _why_not_a_dataset(dst) is None):
            shutil.rmtree(path, ignore_errors=True)


def check_dst(src: Path | None, dst: Path, overwrite: bool) -> None:
    """Check that pack may write ``dst`` (replacing it only if ``overwrite`` and it is provably a
    packed dataset); first moves back a previous dataset that a killed pack left beside it.
    Raises :class:`PackError` naming DST and why not."""
    try:
        _recover(dst)
    except OSError as e:
        raise PackError(f"{dst} is missing and the previous dataset a killed pack left beside it cannot be "
                        f"moved back ({e.strerror or e}); rename the {dst.name}.old-* folder to {dst.name} "
                        f"yourself") from None
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise PackError(f"{dst} exists; pass `overwrite` to replace it", param="overwrite")
        if dst.is_symlink() or not dst.is_dir():
            raise PackError(f"{dst} exists and is not a folder; refusing to replace it even with `overwrite`: "
                            f"remove it yourself or choose another DST", param="overwrite")
        why = _why_not_a_dataset(dst)
        if why is not None:
            # Replacing DST deletes it: only ever delete something pack made.
            raise PackError(f"{dst} exists and is not a packed dataset ({why}); refusing to replace it: "
                            f"move it away yourself or choose another DST")
    src_r, dst_r = (None, None) if src is None else (src.resolve(), dst.resolve())   # None: SRC is a bucket
    if src_r is not None and (dst_r == src_r or src_r in dst_r.parents):
        raise PackError(f"DST {dst} is inside SRC {src}; choose a DST outside the image folder")
    if src_r is not None and dst_r in src_r.parents:
        raise PackError(f"SRC {src} is inside DST {dst}; choose another DST")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PackError(f"cannot create {dst.parent} (the folder that will hold DST): "
                        f"{e.strerror or e}; choose a DST in a writable folder") from None


def make_partial(dst: Path) -> Path:
    """A new, marked folder beside ``dst`` to write the dataset in."""
    token = secrets.token_hex(8)
    partial = dst.with_name(f"{dst.name}.partial-{os.getpid()}-{token}")
    try:
        partial.mkdir()
        _write_marker(partial, "partial", os.getpid(), token)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise PackError(f"cannot write in {dst.parent}: {e.strerror or e}; choose a DST in a "
                        f"writable folder") from None
    return partial


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not supported on every file system; best effort
        pass
    finally:
        os.close(fd)


def install(partial: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished ``partial`` folder (from :func:`make_partial`) to ``dst``, replacing it if
    asked; at every instant the previous dataset is at DST or in a marked folder beside it."""
    _fsync_dir(partial)
    pid, token = os.getpid(), partial.name.rsplit("-", 1)[-1]
    if overwrite and dst.is_dir():
        old = dst.with_name(f"{dst.name}.old-{pid}-{token}")
        # Marked before it moves, so that a kill right after the rename leaves it recognisable.
        _write_marker(dst, "old", pid, token)
        _fault("before-first-rename")
        try:
            os.rename(dst, old)
        except BaseException:
            _remove_marker(dst, "old", pid, token)
            raise
        _fault("after-first-rename")
        try:
            os.rename(partial, dst)
        except BaseException:
            os.rename(old, dst)  # put the previous dataset back
            _remove_marker(dst, "old", pid, token)
            raise
        _fault("after-second-rename")
        _remove_marker(dst, "partial", pid, token)
        _fsync_dir(dst.parent)
        if _ours(old, dst) is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(partial, dst)
        except OSError as e:
            raise PackError(f"cannot move the packed dataset to {dst}: {e.strerror or e} "
                            f"(did something create {dst} meanwhile?)") from None
        _remove_marker(dst, "partial", pid, token)
        _fsync_dir(dst.parent)


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (an existing folder)."""
    p = path.resolve()
    while not os.path.ismount(p) and p.parent != p:
        p = p.parent
    return p


# An I/O error while less than this is free is a full disk: LMDB's commit reports ENOSPC on
# tmpfs and others as "Input/output error", and one commit writes up to 32 MiB (ShardWriter).
_FULL_BYTES = 64 * 2**20


def write_error(dst: Path, e: BaseException) -> PackError:
    """The one-line PackError for an OSError / lmdb.Error while writing DST: a full disk (or an
    I/O error, what LMDB's commit reports for one on some file systems) names where and how much
    is free."""
    text = getattr(e, "strerror", None) or str(e)
    code = getattr(e, "errno", None)
    full = (code in (errno.ENOSPC, errno.EDQUOT) or isinstance(e, lmdb.DiskError) or "No space left" in text
            or "quota exceeded" in text.lower())
    io_error = code == errno.EIO or "Input/output error" in text
    if not (full or io_error):
        return PackError(f"writing {dst} failed: {text}")
    try:
        free = shutil.disk_usage(dst.parent).free     # measured before the partial folder is removed
    except OSError:
        free = None
    if full or (free is not None and free < _FULL_BYTES):
        what = "the disk is full"
    else:
        what = "an I/O error (often a full disk)"
    room = "free space unknown" if free is None else f"{free / MB:,.1f} MB free"
    return PackError(f"writing {dst} failed: {what} ({text}); the file system at {mount_point(dst.parent)} "
                     f"has {room}; free some space or pass a DST on another disk (nothing was left at DST)")
