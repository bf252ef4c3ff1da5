"""A fault-injecting HTTP proxy on loopback, in front of the moto S3 server (tests/s3server.py), for the
object-store fault tests: per request pattern and count it answers 503 SlowDown, resets the connection,
truncates the body, stalls (at most MAX_STALL_S) or caps the bandwidth; it logs every request, so tests
count GETs per key. Bounded everywhere: each fault fires a given number of times, every wait has a
deadline, it listens on 127.0.0.1 only, and the ``fault_proxy`` fixture stops it in a ``finally``.

Point ``AWS_ENDPOINT_URL`` at ``proxy.url`` (the ``proxied`` fixture does) and S3 requests pass through it.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

MAX_STALL_S = 5.0          # the longest a "stall" holds a response
MAX_SLOW_S = 20.0          # the longest a "slow" body takes (then the rest goes at once)
MAX_LINK_S = 120.0         # the longest one body takes under a shared ``bandwidth`` cap (benchmarks)
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
FAULTS = ("503", "reset", "truncate", "stall", "slow")


@dataclass
class Rule:
    """Answer requests matching ``method`` and ``path`` (a regex searched in the URL path) with ``fault``,
    ``times`` times (None: always)."""

    fault: str
    path: str = ""
    method: str = "GET"
    times: int | None = 1
    seconds: float = 2.0            # stall
    rate: int = 1 << 20             # slow: bytes per second


@dataclass
class Request:
    method: str
    path: str          # without the query string, unquoted: /bucket/prefix/key
    range: str | None
    fault: str | None


class FaultProxy:
    """The proxy; ``url`` is its endpoint. ``add(fault, ...)`` arms a :class:`Rule`; ``log`` is every
    request seen, in order."""

    def __init__(self, upstream: str, *, bandwidth: int | None = None, range_cache: bool = False):
        """``bandwidth``: bytes per second for all response bodies together (a link's capacity), or None.
        ``range_cache`` (benchmarks, objects that do not change): a ranged GET is answered from the whole
        object, fetched from upstream once and kept. moto reads all of an object for every ranged GET
        (``FakeKey.value``, under the object's lock; ``_handle_range_header`` slices it), so the 8 parts
        of a 64 MB shard cost it 512 MB of reads, one after another; S3 reads only the range."""
        u = urlparse(upstream)
        self._up = (u.hostname, u.port)
        self.bandwidth = _Link(bandwidth) if bandwidth else None
        self.range_cache: dict[str, tuple[list, bytes]] | None = {} if range_cache else None
        self._cache_locks: dict[str, threading.Lock] = {}
        self.rules: list[Rule] = []
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None    # a client that hung up: expected here
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def add(self, fault: str, path: str = "", **kw) -> Rule:
        """Arm ``fault`` for requests whose path matches ``path`` (see :class:`Rule`)."""
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        rule = Rule(fault, path, **kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def _match(self, method: str, path: str, rng: str | None) -> str | None:
        with self._lock:
            fault = None
            for rule in self.rules:
                if rule.method == method and re.search(rule.path, path) and (rule.times is None or rule.times > 0):
                    if rule.times is not None:
                        rule.times -= 1
                    fault = rule
                    break
            self.log.append(Request(method, path, rng, fault.fault if fault else None))
            return fault

    # -- counting ---------------------------------------------------------------------------------------
    def gets(self, key: str) -> int:
        """GET requests whose path ends with ``/key`` (every attempt, ranged or not)."""
        return sum(1 for r in list(self.log) if r.method == "GET" and r.path.endswith("/" + key))

    def downloads(self, key: str) -> int:
        """Download operations of ``key``: GETs of the whole object (no Range header, or a range from byte
        0). Further ranged GETs of the same object read parts of one download and are not counted."""
        return sum(1 for r in list(self.log) if r.method == "GET" and r.path.endswith("/" + key)
                   and (r.range is None or re.fullmatch(r"bytes=0-\d*", r.range.strip())))


class _Link:
    """A shared bandwidth cap: every response body reserves its chunks' transfer time on one clock, so N
    concurrent responses share ``rate`` bytes/s instead of getting it each. Bounded: after MAX_LINK_S of
    one body, the rest goes at once."""

    CHUNK = 256 << 10
    BURST_S = 0.05

    def __init__(self, rate: int):
        self.rate, self._free_at, self._lock = rate, time.monotonic(), threading.Lock()

    def send(self, out, data: bytes, closing: threading.Event) -> None:
        deadline = time.monotonic() + MAX_LINK_S
        for lo in range(0, len(data), self.CHUNK):
            chunk = data[lo:lo + self.CHUNK]
            with self._lock:
                # A token bucket BURST_S deep: a sender that wakes late (the GIL: 5 ms switch interval, a
                # busy server) catches up instead of losing its slot (without it a cap of 88 MB/s gave 60).
                start = max(time.monotonic() - self.BURST_S, self._free_at)
                self._free_at = start + len(chunk) / self.rate
                done_at = self._free_at
            wait = done_at - time.monotonic()
            if time.monotonic() > deadline or closing.is_set():
                out.write(data[lo:])
                return
            if wait > 0:
                time.sleep(wait)
            out.write(chunk)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: with Nagle's algorithm on, the client's delayed ACK held
    # each small response 40 ms (an index of 11 files took 0.5 s through the proxy, 0.07 s without it).
    disable_nagle_algorithm = True
    owner: FaultProxy

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = io.BytesIO()
            for _ in range(1 << 20):        # bounded: a chunked body of at most a million chunks
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    self.rfile.readline()
                    break
                out.write(self.rfile.read(n))
                self.rfile.readline()
            return out.getvalue()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._body()
        path = unquote(urlparse(self.path).path)
        rule = self.owner._match(self.command, path, self.headers.get("Range"))
        fault = rule.fault if rule else None
        if fault == "503":
            self._send(503, [("Content-Type", "application/xml")],
                       b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
                       b"<Message>Please reduce your request rate.</Message></Error>")
            return
        if fault == "reset":
            self._reset()
            return
        if fault == "stall":
            self.owner._closing.wait(min(rule.seconds, MAX_STALL_S))
        rng = self.headers.get("Range")
        if self.owner.range_cache is not None and self.command == "GET" and rng and not fault:
            whole = self._whole(path)
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if whole is not None and m:
                headers, data = whole
                first, last = int(m.group(1)), min(int(m.group(2) or len(data) - 1), len(data) - 1)
                if first <= last:
                    headers = [*headers, ("Content-Range", f"bytes {first}-{last}/{len(data)}")]
                    self._send(206, headers, memoryview(data)[first:last + 1])
                    return
        status, headers, data = self._forward(body)
        if fault == "truncate" and len(data) > 1:
            self._send(status, headers, data[: len(data) // 2], length=len(data))
            self.close_connection = True
            return
        self._send(status, headers, data, rate=rule.rate if fault == "slow" else None)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _whole(self, path: str):
        """(headers, bytes) of the whole object at ``path`` from the range cache, fetched once; None if
        upstream does not answer 200."""
        owner = self.owner
        with owner._lock:
            lock = owner._cache_locks.setdefault(path, threading.Lock())
        with lock:
            if path not in owner.range_cache:
                conn = http.client.HTTPConnection(*owner._up, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "range"}
                    conn.request("GET", self.path, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.status != 200:
                        return None
                    keep = [(k, v) for k, v in resp.getheaders()
                            if k.lower() not in _HOP and k.lower() not in ("content-length", "content-range")]
                    owner.range_cache[path] = (keep, data)
                finally:
                    conn.close()
            return owner.range_cache[path]

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(*self.owner._up, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "content-length"}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            if self.command == "HEAD":
                return resp.status, out, b""
            return resp.status, [(k, v) for k, v in out if k.lower() != "content-length"], data
        finally:
            conn.close()

    def _send(self, status: int, headers, data: bytes, *, length: int | None = None, rate: int | None = None):
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data) if length is None else length))
            self.end_headers()
            if rate is None and self.owner.bandwidth is not None:
                self.owner.bandwidth.send(self.wfile, data, self.owner._closing)
            elif rate is None:
                self.wfile.write(data)
            else:
                deadline = time.monotonic() + MAX_SLOW_S
                step = max(1, rate // 20)        # 20 writes a second at the capped rate
                for lo in range(0, len(data), step):
                    if time.monotonic() > deadline or self.owner._closing.is_set():
                        self.wfile.write(data[lo:])
                        break
                    self.wfile.write(data[lo:lo + step])
                    time.sleep(step / rate)
            self.wfile.flush()
        except OSError:          # the client hung up (it timed out on a stall): nothing to answer
            self.close_connection = True

    def _reset(self) -> None:
        """Close the connection with a TCP RST (SO_LINGER 0), not a FIN."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        self.wfile = io.BytesIO()      # the handler's final flush goes nowhere


@pytest.fixture
def fault_proxy(s3_server):
    """A :class:`FaultProxy` in front of the moto server, stopped in a ``finally``."""
    proxy = FaultProxy(s3_server).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def proxied(s3_env, fault_proxy, monkeypatch):
    """A fresh bucket (``s3_env``) reached through the proxy: yields (bucket, proxy)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    yield s3_env, fault_proxy
