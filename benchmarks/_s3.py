"""A local S3 endpoint (moto's server on 127.0.0.1) for benchmarks, as in the tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def local_s3(bucket: str) -> Iterator[dict]:
    """Start moto_server, create `bucket`, yield fsspec storage options for it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.2),
            ):
                break
            time.sleep(0.1)
        import s3fs

        options = {
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
            "key": "bench",
            "secret": "bench",
        }
        s3fs.S3FileSystem(**options).mkdir(bucket)
        yield options
    finally:
        server.terminate()
        server.wait(timeout=10)
