"""Reading a dataset's shards: the block members of one shard, from any URL, checked whole.

A shard is read whole (`storage.read_verified`: one GET on an object store, every request and
the read itself retried) and its sha256 compared with the manifest's before any of its blocks is
used. A read cut mid-body starts the object again, so a half-read shard is never yielded; a shard
whose bytes are not those the manifest records is read once more, then refused with a
StructuralError naming it ("sha256 mismatch"). Shards are a few MB (`blocks_per_shard` blocks),
so holding one in memory per reader is cheap, and hashing it (~1.8 GB/s) is about 1% of the time
the loader spends on its blocks.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

from webdataset.tariterators import tar_file_iterator

from data_shards import storage
from data_shards.blocks import MEMBER_SUFFIX
from data_shards.errors import StructuralError


def shard_members(url: str, sha256: str, storage_options: dict | None) -> Iterator[bytes]:
    """Block members of the shard at `url`, in order, once its bytes match `sha256`."""
    data = storage.read_verified(url, sha256, storage_options)
    try:
        for member in tar_file_iterator(io.BytesIO(data)):
            if member["fname"].endswith("." + MEMBER_SUFFIX):
                yield member["data"]
    except tarfile.TarError as exc:  # bytes the manifest vouches for, yet not a tar file
        raise StructuralError(f"not a readable shard: {exc}", path=storage.redact(url)) from None
