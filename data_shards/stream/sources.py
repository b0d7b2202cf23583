"""Opening a dataset's shards and reading their block members: local, s3 and other fsspec URLs.

Shards are opened with webdataset (`gopen`); importing this module registers an `s3` scheme with
it whose s3fs filesystem is made lazily in each process that reads (one per pid), since s3fs is
not fork-safe and DataLoader workers are forked from a process that may already hold one. The
endpoint and options are `storage.s3_options`'s, as for every other s3 access. Other remote
schemes go through `storage.filesystem`; a connection lost mid-shard is reopened and the read
resumes at the next block.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import webdataset
from webdataset.tariterators import tar_file_iterator

from data_shards import storage
from data_shards.blocks import MEMBER_SUFFIX

_FILESYSTEMS: dict[tuple[int, str], Any] = {}


def _open_s3(
    url: str, mode: str = "rb", bufsize: int = 8192, storage_options: dict | None = None, **_: Any
):
    """webdataset opener for s3:// URLs: one s3fs filesystem per process, made after the fork."""
    import s3fs

    key = (os.getpid(), json.dumps(storage_options or {}, sort_keys=True))
    if key not in _FILESYSTEMS:
        options = storage.s3_options(storage_options)
        _FILESYSTEMS[key] = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    return _FILESYSTEMS[key].open(url, mode, block_size=8 * 2**20)


webdataset.gopen_schemes["s3"] = _open_s3


def open_shard(url: str, storage_options: dict | None):
    """A binary stream of the shard at `url` (opening retried on transient errors)."""
    if url.startswith("s3://"):
        return storage.retry(
            lambda: webdataset.gopen(url, "rb", storage_options=storage_options), url
        )
    if storage.is_remote(url):
        fs, path = storage.filesystem(url, storage_options)
        return storage.retry(lambda: fs.open(path, "rb"), url)
    return webdataset.gopen(url, "rb")


def shard_members(url: str, storage_options: dict | None) -> Iterator[bytes]:
    """Block members of one shard, in order; a connection lost mid-read is reopened and resumed."""
    done = 0
    for attempt in range(storage.RETRY_ATTEMPTS):
        stream = open_shard(url, storage_options)
        try:
            index = 0
            for member in tar_file_iterator(stream):
                if not member["fname"].endswith("." + MEMBER_SUFFIX):
                    continue
                if index >= done:
                    yield member["data"]
                    done += 1
                index += 1
            return
        except storage.PERMANENT_ERRORS:
            raise
        except (OSError, tarfile.ReadError) as exc:
            if attempt == storage.RETRY_ATTEMPTS - 1:
                raise
            storage.log.warning(
                "shard %s: %s after %d blocks; reopening", storage.redact(url), exc, done
            )
            time.sleep(storage.RETRY_BASE_DELAY * 2**attempt)
        finally:
            stream.close()
