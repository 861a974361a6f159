"""A real S3 server for tests that need object storage but not a whole cluster: ``s3_server`` starts
SeaweedFS (``tts_devcluster.s3.start_server``) once per session in a temporary folder, on free
loopback ports, and yields its ``S3Endpoint`` (url, region, bucket ``tts``, keys of ``admin`` and
of ``reader``, which may Read and List only). Registered for every test by tests/conftest.py
(``pytest_plugins``)::

    def test_put(s3_server):
        s3 = boto3_client(s3_server)                    # admin
        s3.put_object(Bucket=s3_server.bucket, Key="a", Body=b"x")
        env = s3_server.env("reader")                   # AWS_* variables for a child process

Objects stay for the session: a test writes under a prefix of its own (``unique_prefix``). Tests
on the dev cluster use the cluster's own server instead (``dev_cluster.s3_endpoint()``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tts_devcluster.s3 import S3Endpoint, start_server, stop_server, weed_binary
from tts_devcluster.s3 import boto3_client as _boto3_client


def boto3_client(endpoint: S3Endpoint, identity: str = "admin") -> Any:
    """A boto3 S3 client of ``identity`` ("admin" or "reader") for ``endpoint``, path-style."""
    return _boto3_client(endpoint, identity)


def unique_prefix(name: str = "t") -> str:
    """A key prefix no other test uses: ``<name>-<8 hex>``."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """SeaweedFS for the session (S3 on a free 127.0.0.1 port), stopped by its PID at the end."""
    try:
        weed = weed_binary()
    except RuntimeError as e:
        pytest.fail(f"{e} (`make setup` builds it)")
    proc, endpoint = start_server(tmp_path_factory.mktemp("s3-server"), weed=weed)
    try:
        yield endpoint
    finally:
        stop_server(proc)
