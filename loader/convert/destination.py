"""pack's destination: check DST, work in ``DST.partial-<pid>``, install it atomically.

Killed at any point, DST holds the previous complete dataset or nothing: everything is
written next to DST and renamed into place only when complete (``overwrite`` moves the old
DST aside first and deletes it last). Folders left by killed packs are removed by the
next pack to the same DST.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

from loader.errors import PackError
from loader.format.manifest import MANIFEST_NAME

__all__ = ["check_dst", "install", "make_partial", "remove_stale"]



def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale(dst: Path) -> None:
    """Delete ``DST.partial-<pid>`` / ``DST.old-<pid>`` left by packs that were killed."""
    for p in glob.glob(glob.escape(str(dst)) + ".partial-*") + glob.glob(glob.escape(str(dst)) + ".old-*"):
        pid = p.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def check_dst(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise PackError(f"{dst} exists; pass --overwrite to replace it")
        if dst.is_symlink() or not dst.is_dir():
            raise PackError(f"{dst} exists and is not a folder; refusing to replace it with "
                            f"--overwrite: remove it yourself or choose another DST")
        if not (dst / MANIFEST_NAME).is_file() and any(dst.iterdir()):
            # --overwrite deletes DST: only ever delete something pack made.
            raise PackError(f"{dst} exists and is not a packed dataset (no {MANIFEST_NAME}); "
                            f"refusing to replace it with --overwrite: remove it yourself or choose another DST")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise PackError(f"DST {dst} is inside SRC {src}; choose a DST outside the image folder")
    if dst_r in src_r.parents:
        raise PackError(f"SRC {src} is inside DST {dst}; choose another DST")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PackError(f"cannot create {dst.parent} (the folder that will hold DST): "
                        f"{e.strerror or e}; choose a DST in a writable folder") from None


def make_partial(dst: Path) -> Path:
    partial = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    try:
        if partial.exists():  # left by an earlier call in this same process
            shutil.rmtree(partial)
        partial.mkdir()
    except OSError as e:
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
    """Move the finished ``partial`` folder to ``dst`` (replacing it if asked)."""
    _fsync_dir(partial)
    if overwrite and dst.is_dir():
        old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        try:
            os.rename(partial, dst)
        except BaseException:
            os.rename(old, dst)  # put the previous dataset back
            raise
        _fsync_dir(dst.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(partial, dst)
        except OSError as e:
            raise PackError(f"cannot move the packed dataset to {dst}: {e.strerror or e} "
                            f"(did something create {dst} meanwhile?)") from None
        _fsync_dir(dst.parent)
