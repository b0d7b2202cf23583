"""Compressed inputs, read transparently: a file whose name ends in `.gz`, `.bz2`, `.xz`/`.lzma` or
`.zst` is decompressed as it is read, by every reader (so `career inspect` and `career shard`).

The codec is named by the file's suffix, as fsspec infers it (`fsspec.utils.infer_compression`)
and opened with fsspec's codec; zstd, which fsspec opens only where the `zstandard` package is
installed, is otherwise opened with pyarrow's own zstd codec (always there). The suffix is the
contract: a compressed file under another name reads as binary text (every line quarantined, then
refused as an input that yields no record, with a hint that names this). An archive (`.zip`,
`.tar.gz`, `.7z`, ...) may hold several files and is refused; so is a compressed Parquet file
(`x.parquet.gz`: Parquet compresses its own pages).

A compressed stream cannot be read from a byte offset: the text readers read a compressed file as
one block (`lines_per_block_of`), by one task, and count lines in the decompressed text, so quarantine
entries still say `file:line`. Data that is not what its suffix says (a `.gz` that is not gzip, a
truncated stream, a bad checksum) is a `StructuralError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import zlib
from collections.abc import Iterator
from typing import IO, Any

import fsspec.compression
import fsspec.utils
import pyarrow as pa

from data_shards import storage
from data_shards.errors import StructuralError

#: A name's last suffix -> its codec (fsspec's names); `.zst` is zstd whether or not fsspec has it.
CODECS = {**{s: c for s, c in fsspec.utils.compressions.items() if c != "zip"}, "zst": "zstd"}
#: Suffixes of archives and codecs that are refused, with what to do instead.
REFUSED = {
    "zip": "a zip archive (it may hold several files): unzip it and give one file",
    "7z": "a 7-Zip archive: extract it and give one file",
    "rar": "a RAR archive: extract it and give one file",
    "tgz": "a tar archive: extract it and give one file",
    "tar": "a tar archive: extract it and give one file",
    "lz4": "lz4 is not read: decompress it, or recompress it with gzip, bz2, xz or zstd",
    "br": "brotli is not read: decompress it, or recompress it with gzip, bz2, xz or zstd",
    "z": "compress(1) data is not read: decompress it, or recompress it with gzip, bz2, xz or zstd",
}
#: What a text reader passes as lines per block to read a compressed file as one block.
WHOLE_FILE = 1 << 62
#: What decompressing raises on data that is not what its suffix says (truncated, corrupt).
_DECODE_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, pa.ArrowException)
_READ_CHUNK = 1 << 20


def _suffix(name: str) -> str:
    last = name.rstrip("/").rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[-1].lower() if "." in last else ""


def compression(url: str) -> str | None:
    """The codec `url`'s name says it is compressed with (None: not compressed); an archive or a
    codec not read is refused (StructuralError)."""
    suffix = _suffix(url)
    codec = CODECS.get(suffix)
    inner = _suffix(uncompressed_name(url)) if codec else suffix
    if suffix in REFUSED or inner in REFUSED:
        raise StructuralError(
            f"not read: {REFUSED[suffix if suffix in REFUSED else inner]}",
            path=storage.redact(url),
        )
    return codec


def uncompressed_name(url: str) -> str:
    """`url` without its compression suffix (`people.jsonl.gz` -> `people.jsonl`)."""
    stripped = url.rstrip("/")
    return stripped.rsplit(".", 1)[0] if CODECS.get(_suffix(stripped)) else url


#: The first bytes of each codec's data (and of a zip archive), for `sniff`.
MAGIC = {
    "gzip": b"\x1f\x8b",
    "bz2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "zip": b"PK\x03\x04",
}


def sniff(url: str, storage_options=None) -> str | None:
    """The codec whose magic number `url`'s first bytes hold (None: none, or not a readable
    file). Only for messages: what is read is decided by the name (a text could start so)."""
    try:
        fs, path = storage.filesystem(url, storage_options)
        with fs.open(path, "rb") as handle:
            start = handle.read(8)
    except (OSError, ValueError, StructuralError):
        return None
    return next((codec for codec, magic in MAGIC.items() if start.startswith(magic)), None)


def lines_per_block_of(urls: list[str], lines_per_block: int) -> int:
    """Lines per block for files cut into blocks together: `WHOLE_FILE` (one block) if any of
    them is compressed, else `lines_per_block`."""
    return WHOLE_FILE if any(compression(u) for u in urls) else lines_per_block


class _Decompressing(io.RawIOBase):
    """A decompressing reader whose decoding errors are StructuralErrors naming the file."""

    def __init__(self, raw: IO[bytes], codec: str, url: str) -> None:
        super().__init__()
        self._raw, self._codec, self._url = raw, codec, url
        if codec in fsspec.compression.compr:
            self._source: Any = fsspec.compression.compr[codec](raw, mode="rb")
        else:  # zstd without the `zstandard` package: pyarrow's codec
            self._source = pa.input_stream(raw, compression=codec)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._source.read(len(buffer))
        except _DECODE_ERRORS as exc:
            raise StructuralError(
                f"cannot read it as {self._codec} data, as its name says: {exc}",
                path=storage.redact(self._url),
            ) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(*_DECODE_ERRORS):
                self._source.close()
            self._raw.close()
        super().close()


@contextlib.contextmanager
def open_input(url: str, storage_options=None) -> Iterator[IO[bytes]]:
    """A binary reader of `url`'s content, decompressed if its name says it is compressed."""
    codec = compression(url)
    fs, path = storage.filesystem(url, storage_options)
    raw = storage.retry(lambda: fs.open(path, "rb"), url)
    if codec is None:
        with raw:
            yield raw
        return
    with io.BufferedReader(_Decompressing(raw, codec, url), _READ_CHUNK) as handle:
        yield handle


def read_input(url: str, storage_options=None) -> bytes:
    """The whole content of `url`, decompressed if its name says it is compressed."""
    if compression(url) is None:
        return storage.read_bytes(url, storage_options)

    def whole() -> bytes:
        with open_input(url, storage_options) as handle:
            return handle.read()

    return storage.retry(whole, url)  # a body cut mid-transfer: read again from the start


def read_range(url: str, start: int, stop: int, storage_options=None) -> bytes:
    """Bytes [start, stop) of `url`'s content: a byte range of a plain file; of a compressed one,
    its decompressed text read from the start (a compressed stream has no offsets)."""
    if compression(url) is None:
        fs, path = storage.filesystem(url, storage_options)
        return storage.retry(lambda: fs.cat_file(path, start=start, end=stop), url)

    def decompressed(start: int, stop: int) -> bytes:
        with open_input(url, storage_options) as handle:
            while start > 0:
                skipped = len(handle.read(min(start, _READ_CHUNK)))
                if not skipped:
                    return b""
                start, stop = start - skipped, stop - skipped
            return handle.read(stop)

    return storage.retry(lambda: decompressed(start, stop), url)  # read again if cut


__all__ = [
    "CODECS",
    "WHOLE_FILE",
    "compression",
    "open_input",
    "read_input",
    "read_range",
    "sniff",
    "uncompressed_name",
    "lines_per_block_of",
]
