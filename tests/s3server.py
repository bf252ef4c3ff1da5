"""A real S3 endpoint on loopback for the tests: moto's server in a thread (``moto[server]``, a test
tool that scripts/setup.sh installs). Without moto the fixtures skip, saying so.

``s3_server`` (session): the endpoint URL; the server is stopped in a ``finally`` even when tests
fail. ``s3_env`` (per test): fake credentials and ``AWS_ENDPOINT_URL`` in the environment, a fresh
bucket; yields the bucket's name. ``s3_client()``: a boto3 client for checking what is there.
"""

from __future__ import annotations

import itertools
import os

import pytest

_buckets = itertools.count()

FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """The URL of a moto S3 server on 127.0.0.1 (a free port), for the whole session."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed "
                                     "(scripts/setup.sh installs it): the object-store tests need a local S3")
    pytest.importorskip("obstore", reason="obstore (the 'remote' extra) is not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str):
    """A boto3 client of the test server (boto3 comes with moto)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Fake credentials and the endpoint in the environment, and a new bucket; yields its name."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    for k, v in FAKE_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = f"test-{os.getpid()}-{next(_buckets)}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    yield bucket


def upload_pack(packed, endpoint: str, bucket: str, prefix: str = "ds.packed") -> str:
    """Put the files of the local pack ``packed`` straight into the server under ``prefix`` (boto3: not
    through a proxy, and this process never starts obstore before a fork); return the dataset's URL."""
    client = s3_client(endpoint)
    for f in sorted(packed.iterdir()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{f.name}", Body=f.read_bytes())
    return f"s3://{bucket}/{prefix}"
