"""``pack(engine="ray")``: one Ray task per shard, the driver keeping the plan, the index and the commit.

The driver (:func:`loader.convert.packing.pack`) lists SRC and plans the shards exactly as the local
engine does; :func:`ray_shards` then runs :func:`loader.convert.shardtask.run_shard` for each shard as
a Ray task (1 CPU each, at most ``workers`` in flight), which reads and checks its files and writes
its shard: into DST's partial folder (a local DST: a path every node must see), or into a temporary
file of its node that it uploads under its final name to DST's prefix (a URL DST). A task returns
only the shard's metadata (:class:`~loader.convert.shardtask.ShardResult`: counts, index columns,
skipped rows, digest); the driver writes the index and commits, ``manifest.json`` last. The bytes
are the local engine's, so a retried task is harmless.

Faults: a task whose worker dies (killed, out of memory, node lost) is retried by Ray
(:data:`MAX_RETRIES`); one that fails every attempt fails the pack with one :class:`PackError` line
naming its shard and files. On any failure and on Ctrl-C the tasks are cancelled (their workers
killed), the shards already uploaded to a URL are deleted, and the caller removes the partial folder.

Tests make a task kill its own worker with SIGKILL: ``LOADER_FAULT=raytask:<shard>`` once (a marker
file under the driver's temporary folder lets the retry pass; the nodes must share it, as on one
machine), ``LOADER_FAULT=raytask-always:<shard>`` on every attempt; ``LOADER_FAULT=raytask-hang:<shard>``
makes the task write its PID into that marker and sleep (to be interrupted). The driver reads the
variable and hands it to the tasks; nothing else reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loader.convert.remotesrc import is_remote_src, store_env
from loader.convert.shardtask import ShardResult, items_slice, run_shard, shard_map_size
from loader.errors import LoaderError, PackError, one_line

__all__ = ["MAX_RETRIES", "import_ray", "ray_shards", "set_shard_digests"]

#: Attempts Ray makes after a task's worker died, before the pack fails.
MAX_RETRIES = 3
# Seconds to wait for cancelled tasks to end (their workers are killed) before the partial folder goes.
_CANCEL_WAIT_S = 15.0
# How long LOADER_FAULT=raytask-hang:<shard> holds its task (the Ctrl-C test cancels it long before).
_HANG_S = 120.0
# Files a failed task's message names before "and N more".
_NAMED_FILES = 3


def import_ray():
    """The ``ray`` module, or :class:`PackError` naming the extra to install."""
    try:
        import ray
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "ray":
            raise
        raise PackError("engine='ray' needs Ray, which is not installed: pip install 'loader[ray]'",
                        param="engine") from None
    return ray


@contextmanager
def _connected(address: str | None):
    """Ray, connected: the host's connection if it has one, else ``ray.init(address)`` (None: as
    ``ray.init()``: RAY_ADDRESS, a cluster started on this machine, or a new local one), shut down after."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    from loader.service.settings import unreachable  # (no Ray import there)

    if (e := unreachable(address)) is not None:
        raise PackError(f"no Ray cluster answers at {address} ({one_line(e)}): start one there (`ray start "
                        f"--head`), or leave out the address to start one here", param="ray_address")
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise PackError(f"cannot connect to Ray at {address or os.environ.get('RAY_ADDRESS') or 'a local cluster'}: "
                        f"{one_line(e, 300)}; check the address (ray status)", param="ray_address") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class _Failure:
    """A task's user-facing error (a bad file with ``strict``, a full disk): raised by the driver."""

    message: str
    param: str | None


def _fault(fault: str | None, shard: int, marker: str) -> None:
    """Kill this worker with SIGKILL if the tests ask for it (module docstring)."""
    if fault == f"raytask-always:{shard}":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == f"raytask-hang:{shard}":     # the Ctrl-C test: say who we are, then wait to be cancelled
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(_HANG_S)
    if fault == f"raytask:{shard}":
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return                 # the retry: run normally
        os.kill(os.getpid(), signal.SIGKILL)


def _shard_task(shard: int, name: str, items, *, src: str, out_dir: str | None, url: str | None,
                dst: str, map_size: int, options: dict, fault: str | None, marker: str):
    """One Ray task: write shard ``name`` of ``items`` into ``out_dir``, or upload it to ``url``."""
    import lmdb

    from loader.convert.destination import write_error

    _fault(fault, shard, marker)
    try:
        if url is None:
            return run_shard(os.path.join(out_dir, name), items, src=src, map_size=map_size, **options)
        from loader.storage.objectstore import open_store

        tmp = tempfile.mkdtemp(prefix="loader-shard-")
        try:
            res = run_shard(os.path.join(tmp, name), items, src=src, map_size=map_size, **options)
            open_store(url).upload(Path(tmp) / name, name)
            return res
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except LoaderError as e:
        return _Failure(one_line(e), e.param)
    except (OSError, lmdb.Error) as e:
        return _Failure(one_line(write_error(Path(dst), e)), None)


def _files_named(items) -> str:
    names = [rel for _, (rel, _label) in zip(range(_NAMED_FILES), items)]
    more = len(items) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _task_failed(ray, e: BaseException, name: str, items) -> PackError:
    files = f"{len(items)} file{'s' * (len(items) != 1)}: {_files_named(items)}"
    if isinstance(e, ray.exceptions.RayTaskError):      # an exception in the task: not retried
        return PackError(f"the Ray task writing {name} ({files}) failed: {one_line(e.cause or e, 300)}")
    return PackError(f"the Ray task writing {name} ({files}) failed on all {MAX_RETRIES + 1} attempts: "
                     f"{one_line(e, 300)}; rerun the pack (nothing was left at DST)")


def ray_shards(src: Path | str, out_dir: Path, items, sizes, ranges: Sequence[tuple[int, int]], names: Sequence[str], *,
               dst: Path | str, url: str | None, address: str | None, workers: int | None, options: dict,
               progress: bool) -> list[tuple[str, int, ShardResult]]:
    """Write every shard with a Ray task; return ``(name, lo, result)`` in shard order. ``src``: a folder
    every node sees, or a bucket prefix's URL (the tasks read it with the driver's store settings).

    ``out_dir``: where the shards go (a local DST's partial folder), or, with ``url``, only where the
    driver stages the index (the tasks upload the shards to ``url``). ``workers``: tasks in flight
    (default: the cluster's CPUs). ``options``: :func:`~loader.convert.shardtask.run_shard`'s.
    """
    from tqdm import tqdm

    fault = os.environ.get("LOADER_FAULT") if os.environ.get("LOADER_FAULT", "").startswith("raytask") else None
    markers = [os.path.join(tempfile.gettempdir(), f"loader-fault-{out_dir.name}-{s}") for s in range(len(ranges))]
    with _connected(address) as ray:
        in_flight = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        run = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_shard_task)
        remote_src = is_remote_src(src)     # a bucket: each task reads its objects through its own client
        if url is not None or remote_src:
            # The driver's object-store settings: workers started before they were set, or on other
            # machines, do not have them.
            run = run.options(runtime_env={"env_vars": store_env()})
        # Absolute: a worker's current folder is not the driver's.
        src_s = src if remote_src else os.path.abspath(src)
        out_s, dst_s = os.path.abspath(out_dir), os.path.abspath(dst)
        refs: dict = {}
        done: list = [None] * len(ranges)
        todo = iter(range(len(ranges)))
        bar = tqdm(total=len(items), unit="img", desc="pack (ray)", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True, smoothing=0.05)
        try:
            while True:
                while len(refs) < in_flight and (s := next(todo, None)) is not None:
                    lo, hi = ranges[s]
                    refs[run.remote(s, names[s], items_slice(items, lo, hi), src=src_s, out_dir=out_s, url=url,
                                    dst=dst_s, map_size=shard_map_size(sizes[lo:hi]), options=options,
                                    fault=fault, marker=markers[s])] = s
                if not refs:
                    break
                # A timeout: Ctrl-C is seen between waits, not only when a task ends.
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                for ref in ready:
                    s = refs.pop(ref)
                    lo, hi = ranges[s]
                    try:
                        res = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        raise _task_failed(ray, e, names[s], items_slice(items, lo, hi)) from None
                    if isinstance(res, _Failure):
                        raise PackError(res.message, param=res.param)
                    done[s] = (names[s], lo, res)
                    bar.update(hi - lo)
        except BaseException:
            _cancel(ray, list(refs))
            if url is not None:
                _delete_uploaded(url, names)
            raise
        finally:
            bar.close()
            _clear_markers(markers)
    return done


def _clear_markers(markers: Sequence[str]) -> list[str]:
    """Remove the fault markers the tasks left (tests); return those that were there."""
    found = [m for m in markers if os.path.exists(m)]
    for m in found:
        os.remove(m)
    return found


def _cancel(ray, refs: list) -> None:
    """Cancel ``refs`` (their workers killed) and wait, bounded, until they have ended: nothing may
    write into the partial folder, or upload, after the pack has failed."""
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:       # ended meanwhile
            pass
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_WAIT_S)


def _delete_uploaded(url: str, names: Sequence[str]) -> None:
    """Delete the shards this pack uploaded (never an old dataset's: its names differ), best effort."""
    from loader.storage.objectstore import open_store

    store = open_store(url)
    for name in names:
        try:
            store.delete(name)
        except Exception:       # the next pack replaces leftovers anyway (loader.storage.remotepack)
            pass


def set_shard_digests(folder: Path, digests: Sequence[str], manifest_name: str = "manifest.json") -> None:
    """Record the tasks' shard ``digests`` in the manifest in ``folder``, byte for byte as
    :func:`loader.format.files.add_shard_digests` does from the files."""
    from loader.format.files import write_manifest_json

    path = folder / manifest_name
    obj = json.loads(path.read_bytes())
    for s, digest in zip(obj["shards"], digests, strict=True):
        s["digest"] = digest
    write_manifest_json(path, obj)
