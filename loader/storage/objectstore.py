"""The object-store backend: ``s3://``, ``gs://``, ``az://`` through obstore (the ``remote`` extra).

:func:`open_store` is the one entry point: ``file://`` (and a plain path) gives a
:class:`~loader.storage.store.LocalStore`, a remote URL an :class:`ObjectStore`. obstore was chosen
over fsspec + s3fs/gcsfs/adlfs by measurement (docs/remote.md): one Rust wheel for the three clouds,
faster on large and small GETs, imported in milliseconds.

Credentials come from each cloud's standard chain as obstore (Rust ``object_store``) reads it:
environment variables (``AWS_ACCESS_KEY_ID`` ..., ``AWS_ENDPOINT_URL`` for S3-compatible stores,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME`` / ``_KEY`` ...), web identity and
instance roles (refreshed before they expire); an ``AWS_PROFILE`` (``~/.aws/config``) is read through
boto3 when it is installed.

obstore's runtime is not fork-safe: the client is built on first use in each process (a forked
DataLoader worker builds its own), never inherited.

Failures: transient ones (HTTP 5xx / SlowDown, a reset or refused connection, a timeout, a stall, a
body shorter than the object) are retried :data:`RETRIES` times with exponential backoff and full
jitter, within :data:`RETRY_SECONDS` in all; a missing object, a refused credential and a retry
budget spent are one :class:`~loader.errors.DatasetError` line naming the URL and what to do.

Stalls: a read (GET, HEAD, list, delete) fails when no byte arrives for ``$LOADER_STALL_TIMEOUT``
seconds (:data:`STALL_TIMEOUT`, 30 s), waiting for the headers or mid-body, and is retried; a slow
transfer that keeps moving is never cut (no whole-request timeout on reads). This is reqwest's
``read_timeout``, which resets on every read. Uploads get a client without it: reqwest counts the
time to send the request body against it (measured: a 1 MiB PUT to a server reading 500 kB/s was cut
at the 0.5 s read timeout), so a PUT keeps the whole-request :data:`UPLOAD_TIMEOUT`.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from loader.errors import ArgumentError, DatasetError, LoaderError
from loader.storage import parts
from loader.storage.store import LocalStore, Store, split_url

__all__ = ["RETRIES", "RETRY_SECONDS", "STALL_TIMEOUT", "ObjectStore", "missing_extra", "open_store",
           "stall_timeout"]

#: Attempts after the first for a transient failure, and the time all attempts of one call may take.
RETRIES = 5
RETRY_SECONDS = 60.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 8.0
#: Seconds without a byte after which a read counts as stalled, fails, and is retried
#: (``$LOADER_STALL_TIMEOUT`` overrides it). 30 s: far above a loopback or in-region store's time to
#: first byte (4 ms on moto, tens of ms on S3), and a stalled 64 MB shard is noticed in 30 s, not 300.
STALL_TIMEOUT = 30.0
#: obstore's connect timeout, and the whole-request timeout of an upload (one PUT or one 16 MiB part).
CONNECT_TIMEOUT, UPLOAD_TIMEOUT = "10s", "300s"
#: Reads have no whole-request limit (a moving transfer is never cut); reqwest needs a value: 30 days.
_NO_LIMIT = "30d"

# What to set, per scheme, when a credential is missing or refused.
_CREDENTIALS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance role); "
          "AWS_ENDPOINT_URL for an S3-compatible store",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON file (or run with a service account); "
          "STORAGE_EMULATOR_HOST for an emulator",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN, or a "
          "managed identity); AZURE_STORAGE_ENDPOINT for Azurite",
}
# Where a GCS credential can come from besides the metadata server (object_store's names and Google's).
_GCS_CREDENTIAL_VARS = ("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH", "GOOGLE_SERVICE_ACCOUNT_KEY",
                        "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_BEARER_TOKEN")
# A credential that is there but cannot be used (a service-account file that does not open or whose key
# does not parse): obstore says so before any request.
_UNUSABLE_WORDS = ("credential", "account must be specified", "invalid rsa key", "private key", "service account")
# How a failure reads in obstore's messages (``... status code: 503 Service Unavailable ...``) or in
# the provider's error body: classified by status code first, words second (never a bare "403",
# which a port number can contain).
_STATUS = re.compile(r"status(?: code)?:?\s*(\d{3})\b")
_DENIED_WORDS = ("accessdenied", "access denied", "forbidden", "invalidaccesskeyid", "signaturedoesnotmatch",
                 "expiredtoken", "unauthorized")
_TRANSIENT_WORDS = ("slowdown", "slow down", "service unavailable", "internalerror", "connection", "reset",
                    "timed out", "timeout", "incomplete", "unexpected eof", "end of file", "broken pipe",
                    "error decoding response body")

T = TypeVar("T")


def missing_extra(url: str) -> LoaderError:
    """The one-line error for a URL when the ``remote`` extra (obstore) is not installed."""
    return LoaderError(f"{url} needs the object-store extra: pip install 'loader[remote]'")


def open_store(url: str) -> Store:
    """The :class:`~loader.storage.store.Store` for ``url``: ``file://`` or a plain path -> a local
    folder; ``s3://`` / ``gs://`` / ``az://`` -> :class:`ObjectStore` (needs ``loader[remote]``).

    >>> open_store("s3://bucket/photos.packed").size("manifest.json")     # doctest: +SKIP
    2410
    """
    if "://" not in url:
        return LocalStore(url)
    scheme, bucket, prefix = split_url(url)
    if scheme == "file":
        return LocalStore(prefix, url=url)
    try:
        import obstore  # noqa: F401
    except ImportError:
        raise missing_extra(url) from None
    return ObjectStore(url)


def stall_timeout() -> float:
    """Seconds without a byte before a read is abandoned and retried: ``$LOADER_STALL_TIMEOUT`` (a
    number > 0) or :data:`STALL_TIMEOUT`. Read when a process builds its client."""
    raw = os.environ.get("LOADER_STALL_TIMEOUT")
    if raw is None or not raw.strip():
        return STALL_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 10 ** 6:     # also NaN
        raise ArgumentError(f"environment variable LOADER_STALL_TIMEOUT={raw!r} must be a number of seconds "
                            f"> 0 (default {STALL_TIMEOUT:g}): fix or unset it")
    return value


def _options(scheme: str, *, upload: bool = False) -> dict:
    """obstore keyword arguments beyond what it reads from the environment itself; ``upload``: for the
    client that sends bodies (no stall timeout, a whole-request one instead)."""
    client: dict = {"connect_timeout": CONNECT_TIMEOUT}
    if upload:
        client["timeout"] = UPLOAD_TIMEOUT
    else:       # no byte for stall_timeout(): fails, then is retried; a slow but moving body is never cut
        client.update(read_timeout=f"{round(stall_timeout() * 1000)}ms", timeout=_NO_LIMIT)
    kw: dict = {}
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kw["endpoint"] = endpoint
            if endpoint.startswith("http://"):
                client["allow_http"] = True
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kw["region"] = region
        if os.environ.get("AWS_PROFILE") and not os.environ.get("AWS_ACCESS_KEY_ID"):
            try:   # object_store does not read ~/.aws/config profiles; boto3 does (and refreshes)
                from obstore.auth.boto3 import Boto3CredentialProvider

                kw["credential_provider"] = Boto3CredentialProvider()
            except ImportError:
                pass
    elif scheme == "gs":
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
        if emulator:        # what Google's client libraries and gcsfs read for an emulator (fake-gcs-server)
            kw["base_url"] = (emulator if "://" in emulator else f"http://{emulator}").rstrip("/")
            if not any(os.environ.get(k) for k in _GCS_CREDENTIAL_VARS):
                # An emulator checks no credential; without one obstore would ask the metadata server.
                kw["bearer_token"] = "emulator"
        if (kw.get("base_url") or os.environ.get("GOOGLE_BASE_URL") or _gcs_file_base_url()).startswith("http://"):
            client["allow_http"] = True
    elif scheme == "az":
        if (os.environ.get("AZURE_STORAGE_ENDPOINT") or os.environ.get("AZURE_ENDPOINT") or "").startswith("http://"):
            client["allow_http"] = True
    kw["client_options"] = client
    # Retries are ours alone (ObjectStore._call: it also covers truncated bodies), so their count is exact.
    kw["retry_config"] = {"max_retries": 0, "retry_timeout": timedelta(seconds=RETRY_SECONDS),
                          "backoff": {"init_backoff": timedelta(seconds=_BACKOFF_FIRST),
                                      "max_backoff": timedelta(seconds=_BACKOFF_MAX), "base": 2.0}}
    return kw


def _gcs_file_base_url() -> str:
    """The ``gcs_base_url`` of the service-account file obstore will read (an emulator's address), or ""."""
    path = next((os.environ[k] for k in ("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH",
                                         "GOOGLE_APPLICATION_CREDENTIALS") if os.environ.get(k)), None)
    try:
        with open(path, "rb") as f:             # a service-account file is a few KB: read at most 1 MB
            obj = json.loads(f.read(1 << 20))
        url = obj.get("gcs_base_url") if isinstance(obj, dict) else None
        return url if isinstance(url, str) else ""
    except (TypeError, OSError, ValueError):    # no file, or not JSON: obstore's own error says so
        return ""


# obstore's debug text of every failed request names its retry budget ("retry_timeout: 180s"), which is
# no sign of a timeout: without this, a 400 read as transient and was tried 6 times.
_RETRY_BUDGET = re.compile(r"retry_timeout:\s*\S+")


def _text(e: BaseException) -> str:
    """The failure's text, lower case, as classified (without the retry budget obstore prints)."""
    return _RETRY_BUDGET.sub("", str(e).lower())


class _Truncated(Exception):
    """A body shorter than the object's size: retried like a reset connection."""


class ObjectStore:
    """An object-store prefix (``s3://bucket/prefix``, ``gs://``, ``az://``) as a :class:`Store`."""

    def __init__(self, url: str, *, sleep: Callable[[float], None] = time.sleep):
        self.url = url.rstrip("/")
        self.scheme, self.bucket, self.prefix = split_url(url)
        self._sleep = sleep            # tests pass a recorder: the backoff is checked, not waited for
        self._clients: dict[bool, object] = {}
        self._pid = -1

    # The clients are per process: obstore's runtime does not survive fork(). Two: reads (stall timeout)
    # and uploads (whole-request timeout), see the module's docstring.
    def _store(self, *, upload: bool = False):
        if self._pid != os.getpid():
            self._clients, self._pid = {}, os.getpid()
        if upload not in self._clients:
            from obstore.store import from_url

            self._clients[upload] = from_url(f"{self.scheme}://{self.bucket}", **_options(self.scheme, upload=upload))
        return self._clients[upload]

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _kind(e: BaseException) -> str:
        """``"missing"``, ``"denied"``, ``"transient"`` (worth retrying) or ``"other"``."""
        from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

        if isinstance(e, (FileNotFoundError, NotFoundError)):      # obstore raises the builtins for 404/403
            return "missing"
        if isinstance(e, (PermissionError, PermissionDeniedError, UnauthenticatedError)):
            return "denied"
        if isinstance(e, (_Truncated, ConnectionError, TimeoutError)):
            return "transient"
        text = _text(e)
        m = _STATUS.search(text)
        code = int(m.group(1)) if m else None
        if code == 404 or "nosuchbucket" in text or "nosuchkey" in text:
            return "missing"
        if code in (401, 403) or any(w in text for w in _DENIED_WORDS):
            return "denied"
        if (code is not None and (code >= 500 or code in (408, 429))) or any(w in text for w in _TRANSIENT_WORDS):
            return "transient"
        return "other"

    def _error(self, e: BaseException, key: str, doing: str) -> DatasetError:
        """One line for a failure that is not (or no longer) worth retrying."""
        where = f"{self.url}/{key}" if key else self.url
        text = _text(e)
        kind = self._kind(e)
        if kind == "missing":
            what = "its bucket" if "nosuchbucket" in text or "containernotfound" in text else "the object"
            return DatasetError(f"{where} does not exist ({what} was not found while trying to {doing}); "
                                f"check the URL")
        if kind == "denied":
            return DatasetError(f"{where}: access denied while trying to {doing}; {_CREDENTIALS[self.scheme]}")
        if any(w in text for w in _UNUSABLE_WORDS):
            return DatasetError(f"{where}: no credentials found to {doing}; {_CREDENTIALS[self.scheme]}")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return DatasetError(f"{where}: cannot {doing}: {first[:300]}")

    def _call(self, fn: Callable[[], T], key: str, doing: str) -> T:
        """``fn()`` with bounded retries of transient failures (exponential backoff, full jitter)."""
        t0 = time.monotonic()
        for attempt in range(RETRIES + 1):
            try:
                return fn()
            except LoaderError:      # ours (a DatasetError from a nested call, a bad LOADER_STALL_TIMEOUT): as is
                raise
            except Exception as e:   # obstore's errors, OSError from a body stream, _Truncated
                transient = self._kind(e) == "transient"
                delay = random.uniform(0, min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** attempt))
                if not transient or attempt == RETRIES or time.monotonic() - t0 + delay > RETRY_SECONDS:
                    err = self._error(e, key, doing)
                    if transient:
                        stalled = ("; the last one timed out (a read with no byte for LOADER_STALL_TIMEOUT="
                                   f"{stall_timeout():g} s is a stall)" if "timeout" in _text(e) else "")
                        err = DatasetError(f"{err}; gave up after {attempt + 1} attempts in "
                                           f"{time.monotonic() - t0:.0f} s{stalled}; check the network and the "
                                           f"store's endpoint")
                    raise err from None
                self._sleep(delay)
        raise AssertionError("unreachable")   # the loop returns or raises

    # ---------------------------------------------------------------- the Store methods

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if it does not exist."""
        import obstore
        from obstore.exceptions import NotFoundError

        def head():
            try:
                return obstore.head(self._store(), self._key(key))["size"]
            except (NotFoundError, FileNotFoundError):
                return None
        return self._call(head, key, "read its size")

    def read(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (``end`` None: to its end)."""
        import obstore

        def get():
            if start == 0 and end is None:
                data = bytes(obstore.get(self._store(), self._key(key)).bytes())
            else:
                stop = end if end is not None else self.size(key)
                if stop is None:
                    raise DatasetError(f"{self.url}/{key} does not exist; check the URL")
                if stop <= start:
                    return b""
                data = bytes(obstore.get_range(self._store(), self._key(key), start=start, end=stop))
                if len(data) != stop - start:
                    raise _Truncated(f"got {len(data)} of {stop - start} bytes")
            return data
        return self._call(get, key, "read it")

    def download(self, key: str, dest: Path, *, size: int | None = None) -> None:
        """Write the whole object to the local file ``dest`` (streamed; a short body is retried). With
        its ``size`` known and at least two parts, as ranged parts in parallel, the most urgent
        download's first (:mod:`loader.storage.parts`)."""
        import obstore

        if size is not None and parts.part_size(size) is not None:
            def fetch_range(fd: int, start: int, end: int, stop) -> None:
                def get():
                    result = obstore.get(self._store(), self._key(key), options={"range": (start, end)})
                    if result.meta["size"] != size:      # changed since the index was written: no retry
                        raise DatasetError(f"{self.url}/{key} is {result.meta['size']} bytes, the index says "
                                           f"{size}: the object changed since the index was written; re-pack "
                                           f"or re-upload the dataset")
                    at = start
                    for chunk in result.stream(min_chunk_size=1 << 20):
                        if stop.is_set():
                            return
                        at += parts.write_at(fd, chunk, at)
                    if at != end:
                        raise _Truncated(f"range {start}-{end} ended after {at - start} bytes")
                self._call(get, key, "download it")
            parts.download_parts(dest, size, fetch_range)
            return

        def get():
            parts.begun()
            result = obstore.get(self._store(), self._key(key))
            want, got = result.meta["size"], 0
            with open(dest, "wb") as f:
                for chunk in result.stream(min_chunk_size=8 << 20):
                    f.write(chunk)
                    got += len(chunk)
            if got != want:
                raise _Truncated(f"body ended after {got} of {want} bytes")
        self._call(get, key, "download it")

    def upload(self, src: Path, key: str) -> None:
        """Write the local file ``src`` as the object ``key`` (multipart for large files; an object
        store makes it visible only when complete)."""
        import obstore

        def put():
            with open(src, "rb") as f:
                obstore.put(self._store(upload=True), self._key(key), f, chunk_size=16 << 20, max_concurrency=8)
        self._call(put, key, "upload it")

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (relative to the store's root), sorted."""
        import obstore

        root = f"{self.prefix}/" if self.prefix else ""

        def ls():
            keys = []
            # object_store lists by whole path segments: list the root, filter by the string prefix.
            for batch in obstore.list(self._store(), self.prefix or None):
                keys.extend(m["path"][len(root):] for m in batch)
            return sorted(k for k in keys if k.startswith(prefix))
        return iter(self._call(ls, prefix, "list it"))

    def list_sizes(self) -> list[tuple[str, int]]:
        """``(key, size)`` of every object under the root, sorted by key: one paged listing, no
        request per object (``pack`` from a bucket plans its shards from it)."""
        import obstore

        root = f"{self.prefix}/" if self.prefix else ""

        def ls():
            found = []
            for batch in obstore.list(self._store(), self.prefix or None):
                found.extend((m["path"][len(root):], m["size"]) for m in batch)
            return sorted(found)
        return self._call(ls, "", "list it")

    def read_capped(self, key: str, cap: int) -> tuple[int, bytes | None] | None:
        """``(size, data)`` of the whole object in one GET, its body left unread (``data`` None) when
        ``size`` is over ``cap``; None if the object does not exist. A short body is retried."""
        import obstore
        from obstore.exceptions import NotFoundError

        def get():
            try:
                result = obstore.get(self._store(), self._key(key))
            except (NotFoundError, FileNotFoundError):
                return None
            size = result.meta["size"]
            if size > cap:
                return size, None
            data = bytes(result.bytes())
            if len(data) != size:
                raise _Truncated(f"got {len(data)} of {size} bytes")
            return size, data
        return self._call(get, key, "read it")

    def delete(self, key: str) -> None:
        """Remove the object if it exists."""
        import obstore
        from obstore.exceptions import NotFoundError

        def rm():
            try:
                obstore.delete(self._store(), self._key(key))
            except (NotFoundError, FileNotFoundError):
                pass
        self._call(rm, key, "delete it")
