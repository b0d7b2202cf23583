"""Cut text files into blocks of lines by byte ranges, so that Ray tasks read them in parallel.

The text readers' helper (career-code files, resume JSON Lines), kept beside them.

One streaming pass over a file (64 MB at a time, numpy to find newlines) records the byte offset
at which every `lines_per_block`-th line starts. A task then reads only its byte range and knows
the number of its first line, so quarantine entries still say `file:line`. Lines come back as
bytes: decoding is per line, so one bad line is one quarantined record.

A compressed file (`compressed`: `.gz`, `.bz2`, `.xz`, `.zst`) is indexed and read decompressed:
offsets and the sha256 are those of its text, and its readers cut it into one block (a compressed
stream cannot be read from an offset).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from data_shards import storage
from data_shards.readers.common import strip_bom_bytes
from data_shards.readers.compressed import open_input, read_range

READ_CHUNK = 64 * 2**20


@dataclass(frozen=True)
class LineIndex:
    lines: int  # number of lines (a last line without a newline counts)
    block_starts: tuple[int, ...]  # byte offset of lines 0, K, 2K, ...
    size: int  # bytes in the file
    lines_per_block: int
    sha256: str = ""  # of the whole file: identifies the input in the manifest

    def ranges(self) -> list[tuple[int, int, int]]:
        """(first line number, byte start, byte stop) of each block; line numbers start at 1."""
        if not self.block_starts:
            return []
        stops = [*self.block_starts[1:], self.size]
        firsts = [1 + i * self.lines_per_block for i in range(len(self.block_starts))]
        return list(zip(firsts, self.block_starts, stops, strict=True))


def index_lines(url: str, lines_per_block: int, storage_options=None) -> LineIndex:
    """Line count and block start offsets of a text file (any fsspec URL; decompressed if its name
    says it is compressed)."""
    if lines_per_block < 1:
        raise ValueError("lines_per_block must be at least 1")
    # One pass over the whole file: a body cut mid-transfer reads it again from the start.
    return storage.retry(lambda: _index_lines(url, lines_per_block, storage_options), url)


def _index_lines(url: str, lines_per_block: int, storage_options) -> LineIndex:
    starts = [0]
    digest = hashlib.sha256()
    newlines = 0
    position = 0
    last_byte = b"\n"
    with open_input(url, storage_options) as handle:
        while True:
            chunk = handle.read(READ_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            found = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            numbers = newlines + 1 + np.arange(len(found))  # 1-based count of each newline
            boundary = found[numbers % lines_per_block == 0]
            starts.extend((position + boundary + 1).tolist())
            newlines += len(found)
            position += len(chunk)
            last_byte = chunk[-1:]
    lines = newlines + (0 if last_byte == b"\n" else 1)
    if starts and starts[-1] >= position and len(starts) > 1:
        starts.pop()  # the file ends exactly at a block boundary
    if position == 0:
        starts = []
    return LineIndex(lines, tuple(starts), position, lines_per_block, digest.hexdigest())


def read_line_bytes(url: str, start: int, stop: int, storage_options=None) -> list[bytes]:
    """Lines in bytes [start, stop) of a text file (the range holds whole lines), undecoded.

    Each reader decodes line by line (`common.decode_line`), so one line that is not UTF-8 is one
    quarantined record, not a failed block. A byte-order mark is dropped at byte 0 of the file
    only (where an editor puts it): one met later is the data of that line.
    """
    if stop <= start:
        return []
    data = read_range(url, start, stop, storage_options)
    if start == 0:
        data = strip_bom_bytes(data)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines
