"""A stalled read is cut after ``$LOADER_STALL_TIMEOUT`` seconds without a byte and retried; a slow transfer
that keeps moving is never cut, nor is a slow upload (loader/storage/objectstore.py's two clients).

Through tests/faultproxy.py in front of moto: its ``stall`` fault holds the response before the headers; its
``slow`` fault at 1 byte/s sends the headers and one byte, then nothing for 1 s: a stall mid-body. The stall
timeout is shortened (0.3-0.5 s) so every stall outlasts it many times over; counts are asserted, not times.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import pack_jpeg_classes, record_bytes
from s3server import upload_pack

import loader.storage.objectstore as objectstore
from loader.errors import ArgumentError, DatasetError
from loader.format.dataset import open_dataset

pytest_plugins = ["s3server", "faultproxy"]

SHARDS = 4


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """32 small JPEGs in 2 classes, 4 shards (a local pack, uploaded to each test's bucket)."""
    root = tmp_path_factory.mktemp("stall")
    pack_jpeg_classes(root, classes=2, per_class=16, shards=SHARDS, seed_step=70, size=(64, 48))
    return root / "packed"




@pytest.mark.parametrize("fault,kw", [("stall", {"seconds": 5.0}),      # before the headers, 10x the timeout
                                      ("slow", {"rate": 1})])            # mid-body: 1 byte, then 1 s of nothing
def test_a_stalled_download_is_cut_and_retried_and_the_bytes_are_right(packed, proxied, s3_server, tmp_path,
                                                                        monkeypatch, fault, kw):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", "0.3")
    key = "shard-00001.lmdb"
    proxy.add(fault, path=f"/{key}$", times=1, **kw)
    delays: list[float] = []
    objectstore.ObjectStore(url, sleep=delays.append).download(key, tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == (packed / key).read_bytes()
    # Waited out instead of cut, the first GET would have succeeded: one GET, no backoff.
    assert proxy.gets(key) == 2 and [r.fault for r in proxy.log if r.path.endswith(key)] == [fault, None]
    assert len(delays) == 1 and 0 <= delays[0] <= objectstore._BACKOFF_FIRST


def test_a_stalled_ranged_read_is_cut_and_retried(packed, proxied, s3_server, monkeypatch):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", "0.3")
    key = "shard-00002.lmdb"
    proxy.add("slow", path=f"/{key}$", times=1, rate=1)
    store = objectstore.ObjectStore(url, sleep=lambda s: None)
    assert store.read(key, 100, 5000) == (packed / key).read_bytes()[100:5000]
    assert proxy.gets(key) == 2


def test_a_slow_but_moving_download_is_never_cut(packed, proxied, s3_server, tmp_path, monkeypatch):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", "0.5")
    key = "shard-00003.lmdb"
    size = (packed / key).stat().st_size
    rate = size // 3            # the body takes ~3 s, 6x the stall timeout, in writes 50 ms apart
    assert size / rate >= 6 * 0.5 and rate // 20 >= 1
    proxy.add("slow", path=f"/{key}$", times=1, rate=rate)
    delays: list[float] = []
    objectstore.ObjectStore(url, sleep=delays.append).download(key, tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == (packed / key).read_bytes()
    assert proxy.gets(key) == 1 and delays == []


def test_stalls_on_the_way_through_open_dataset_still_give_the_pack_s_records(packed, proxied, s3_server, tmp_path,
                                                                              monkeypatch):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", "0.5")
    proxy.add("stall", path=r"/shard-00000\.lmdb$", times=1, seconds=5.0)
    proxy.add("slow", path=r"/shard-00001\.lmdb$", times=1, rate=1)
    size = (packed / "shard-00002.lmdb").stat().st_size
    proxy.add("slow", path=r"/shard-00002\.lmdb$", times=1, rate=size // 2)    # ~2 s, moving: not cut
    proxy.add("stall", path=r"/labels\.npy$", times=1, seconds=5.0)
    ds = open_dataset(url, cache_dir=tmp_path / "cache")
    assert record_bytes(ds) == record_bytes(open_dataset(packed))
    assert [proxy.downloads(f"shard-{s:05d}.lmdb") for s in range(SHARDS)] == [2, 2, 1, 1]
    assert proxy.downloads("labels.npy") == 2


def test_a_read_that_always_stalls_is_one_line_after_the_bounded_retries(packed, proxied, s3_server, tmp_path,
                                                                         monkeypatch):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", "0.2")
    key = "shard-00003.lmdb"
    proxy.add("stall", path=f"/{key}$", times=None, seconds=3.0)
    delays: list[float] = []
    with pytest.raises(DatasetError) as info:
        objectstore.ObjectStore(url, sleep=delays.append).download(key, tmp_path / "got")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{url}/{key}: cannot download it: ")
    assert f"gave up after {objectstore.RETRIES + 1} attempts" in msg
    assert "the last one timed out (a read with no byte for LOADER_STALL_TIMEOUT=0.2 s is a stall)" in msg
    assert proxy.gets(key) == objectstore.RETRIES + 1 and len(delays) == objectstore.RETRIES


class _SlowReader:
    """A one-shot HTTP server on 127.0.0.1 that reads a PUT's body at ~``rate`` bytes/s, then answers 200
    with an ETag (what an S3 PUT answers). ``body`` is what it received. Bounded: 30 s at most."""

    def __init__(self, rate: int):
        self.rate, self.body, self.requests = rate, b"", 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(30)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import time

        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            buf = b""
            while b"\r\n\r\n" not in buf and len(buf) < 1 << 16:
                buf += conn.recv(4096)
            head, body = buf.split(b"\r\n\r\n", 1)
            self.requests += 1
            length = next(int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                          if k.strip().lower() == b"content-length")
            step = max(1, self.rate // 10)
            deadline = time.monotonic() + 30
            while len(body) < length and time.monotonic() < deadline:
                time.sleep(0.1)                   # 10 reads a second: gaps of 0.1 s, all under the 0.3 s timeout
                body += conn.recv(min(step, length - len(body)))
            self.body = body
            conn.sendall(b'HTTP/1.1 200 OK\r\nETag: "e"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')

    def close(self) -> None:
        self._sock.close()
        self._thread.join(35)


def test_a_slow_upload_is_not_cut_by_the_stall_timeout(s3_env, tmp_path, monkeypatch):
    """reqwest counts sending the request body against its read timeout (a 1 MiB PUT to a server reading
    500 kB/s is cut at a 0.5 s read timeout), so uploads use a client without one."""
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", "0.3")
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    server = _SlowReader(rate=200_000)     # the body takes ~1.5 s, 5x the stall timeout
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        objectstore.ObjectStore(f"s3://{s3_env}/x", sleep=lambda s: None).upload(tmp_path / "f", "obj")
    finally:
        server.close()
    assert server.requests == 1 and server.body == data


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan"])
def test_a_bad_stall_timeout_is_one_line_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", raw)
    want = (f"environment variable LOADER_STALL_TIMEOUT={raw!r} must be a number of seconds > 0 (default 30): "
            f"fix or unset it")
    with pytest.raises(ArgumentError) as info:
        objectstore.stall_timeout()
    assert str(info.value) == want
    with pytest.raises(ArgumentError) as info:      # as is, when a store builds its client: not a "cannot read it"
        objectstore.ObjectStore("s3://bucket/p", sleep=lambda s: None).size("manifest.json")
    assert str(info.value) == want


def test_the_stall_timeout_default_and_override(monkeypatch):
    monkeypatch.delenv("LOADER_STALL_TIMEOUT", raising=False)
    assert objectstore.stall_timeout() == objectstore.STALL_TIMEOUT == 30.0
    assert objectstore._options("s3")["client_options"]["read_timeout"] == "30000ms"
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", "2.5")
    read, up = objectstore._options("s3")["client_options"], objectstore._options("s3", upload=True)["client_options"]
    assert (read["read_timeout"], read["timeout"]) == ("2500ms", "30d")
    assert "read_timeout" not in up and up["timeout"] == objectstore.UPLOAD_TIMEOUT
