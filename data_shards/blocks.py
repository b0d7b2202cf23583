"""The compact columnar encoding of a block of people: one tar member per block, not per person.

A tar member costs >= 1 KB of headers; a person is ~60 bytes of ids. So a shard sample holds up to
`PEOPLE_PER_BLOCK` people as flat arrays of vocabulary ids with per-person lengths, compressed
with zstd. Layout of a member (all little-endian):

    b"CRB1" | u32 header length | header JSON | u64 payload length | zstd(payload)

The header lists the arrays (name, dtype, count) in payload order. Per person: `lengths`,
`pid_offsets` + `pid_bytes` (UTF-8 ids), and static ids (`location`, `gender`, `ethnicity`,
`birth_year`) and `weight` when present. Per job-year: `job`, `year`, and `education`,
`log_wage`, `oracle_logp` when present (NaN = missing wage). Ids use the smallest unsigned type
that holds the field's vocabulary. Decoding is `np.frombuffer` on slices: no Python per person.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

MAGIC = b"CRB1"
FORMAT_VERSION = 1
PEOPLE_PER_BLOCK = 1024
MEMBER_SUFFIX = "crb"
_CODEC = pa.Codec("zstd", compression_level=1)
#: The largest decompressed payload a block may declare. A block of `PEOPLE_PER_BLOCK` people
#: with 100-year careers and every field is ~4 MB; the cap stops a damaged or crafted member
#: (a "zstd bomb") from making a reader allocate what its header claims.
MAX_PAYLOAD_BYTES = 256 * 2**20

PERSON_FIELDS = ("location", "gender", "ethnicity", "birth_year")
TOKEN_FIELDS = ("job", "year", "education")
FLOAT_TOKEN_FIELDS = ("log_wage", "oracle_logp")


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned integer type for ids below `vocab_size`."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} tokens is too large")


@dataclass
class Block:
    """Decoded people of one block. Token arrays are flat; `offsets` cut them per person."""

    person_id: np.ndarray  # (n,) str
    lengths: np.ndarray  # (n,) int64
    arrays: dict[str, np.ndarray]  # token fields (T,), person fields (n,), weight (n,)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])

    @property
    def num_people(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


def encode_block(
    person_id: list[str] | np.ndarray,
    lengths: np.ndarray,
    arrays: dict[str, np.ndarray],
    dtypes: dict[str, np.dtype],
) -> bytes:
    """Serialise one block. `arrays` holds ids (cast to `dtypes[name]`) and float32 columns."""
    ids = [str(p).encode() for p in person_id]
    pid_offsets = np.zeros(len(ids) + 1, dtype=np.uint32)
    pid_offsets[1:] = np.cumsum([len(b) for b in ids])
    parts: list[tuple[str, np.ndarray]] = [
        (
            "lengths",
            np.asarray(lengths, dtype=np.uint16 if max(lengths, default=0) < 65536 else np.uint32),
        ),
        ("pid_offsets", pid_offsets),
        ("pid_bytes", np.frombuffer(b"".join(ids), dtype=np.uint8)),
    ]
    for name in sorted(arrays):
        values = arrays[name]
        dtype = dtypes.get(name, np.dtype(np.float32))
        parts.append((name, np.ascontiguousarray(values, dtype=dtype)))
    header = json.dumps(
        {
            "v": FORMAT_VERSION,
            "n": len(ids),
            "arrays": [[n, a.dtype.str, len(a)] for n, a in parts],
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    payload = b"".join(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for _, a in parts)
    if len(payload) > MAX_PAYLOAD_BYTES:  # never write a block no reader would accept
        raise ValueError(
            f"a block of {len(ids)} people is {len(payload):,} bytes, over the "
            f"{MAX_PAYLOAD_BYTES:,}-byte cap: use fewer people per block"
        )
    compressed = _CODEC.compress(payload, asbytes=True)
    return (
        MAGIC
        + struct.pack("<I", len(header))
        + header
        + struct.pack("<Q", len(payload))
        + compressed
    )


def _decode_ids(offsets: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """UTF-8 ids (concatenated, with offsets) -> numpy str array, without a Python loop."""
    lengths = np.diff(offsets)
    n = len(lengths)
    width = int(lengths.max(initial=0)) or 1
    padded = np.zeros((n, width), dtype=np.uint8)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(int(lengths.sum())) - np.repeat(offsets[:-1], lengths)
    padded[rows, cols] = raw
    ids = padded.view(f"S{width}").reshape(n)
    if raw.size and raw.max() >= 0x80:  # non-ASCII: decode as UTF-8 properly
        return np.array([b.decode() for b in ids.tolist()], dtype=str)
    return ids.astype(f"U{width}")


def decode_block(data: bytes) -> Block:
    """Inverse of `encode_block`. Raises ValueError on a damaged member."""
    if data[:4] != MAGIC:
        raise ValueError("not a CAREER block (bad magic)")
    (header_len,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8 : 8 + header_len])
    if header.get("v") != FORMAT_VERSION:
        raise ValueError(f"unsupported block format {header.get('v')!r}")
    (payload_len,) = struct.unpack_from("<Q", data, 8 + header_len)
    if payload_len > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"block declares a {payload_len:,}-byte payload, over the {MAX_PAYLOAD_BYTES:,}-byte cap"
        )
    try:  # the real decompressed size must be exactly the declared one
        payload = _CODEC.decompress(
            memoryview(data)[16 + header_len :], decompressed_size=payload_len, asbytes=True
        )
    except OSError as exc:
        raise ValueError(f"block payload does not decompress to its declared size: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    position = 0
    for name, dtype, count in header["arrays"]:
        dt = np.dtype(dtype)
        arrays[name] = np.frombuffer(payload, dtype=dt, count=count, offset=position)
        position += dt.itemsize * count
    if position != payload_len:
        raise ValueError("block payload length does not match its header")
    person_id = _decode_ids(arrays.pop("pid_offsets").astype(np.int64), arrays.pop("pid_bytes"))
    lengths = arrays.pop("lengths").astype(np.int64)
    return Block(person_id, lengths, arrays)
