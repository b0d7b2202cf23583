"""One vocabulary for every field of a career record, hashed, extendable without renumbering.

In every field `<pad>`=0, `<bos>`=1, `<unk>`=2, then values: categories by descending frequency
then code; years (calendar and birth) in numeric order over a contiguous span, so consecutive years
get consecutive ids (the paper's baselines and forecasting rely on it). Calendar years cover at
least `YEAR_SPAN` so that fine-tuning data with earlier or later years never forces a renumbering.

Extending appends tokens the parent lacks and never moves an existing one: a vocabulary is
compatible with its parent when each parent field is a prefix of the child's field.
Counting is separate from building (`count_tokens` / `merge_counts`) so the sharding job can count
in parallel and build once. The special ids (`PAD_ID`, `BOS_ID`, `UNK_ID`) are defined here only;
the loader and the models import them from here.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_shards import storage
from data_shards.schema import YEAR_RANGE

FORMAT_VERSION = 1
PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
SPECIALS = (PAD, BOS, UNK)
PAD_ID, BOS_ID, UNK_ID = 0, 1, 2

#: vocabulary field -> record column it counts.
FIELD_COLUMNS = {
    "job": "jobs",
    "year": "years",
    "education": "education",
    "location": "location",
    "gender": "gender",
    "ethnicity": "ethnicity",
    "birth_year": "birth_year",
}
NUMERIC_FIELDS = ("year", "birth_year")
#: Calendar and birth years always in the vocabulary: ids stay consecutive, and later data (every
#: reader rejects years outside this span) never appends a year out of order.
YEAR_SPAN = YEAR_RANGE

Counts = dict[str, collections.Counter]


def count_tokens(table: pa.Table) -> Counts:
    """Per-field token counts of a record table (nulls are not counted)."""
    counts: Counts = {}
    for name, column in FIELD_COLUMNS.items():
        counter: collections.Counter = collections.Counter()
        if column in table.column_names:
            values = table.column(column)
            if pa.types.is_list(values.type):
                values = pc.list_flatten(values)
            result = pc.value_counts(values.drop_null())
            for item in result.to_pylist():
                counter[str(item["values"])] += item["counts"]
        counts[name] = counter
    return counts


def merge_counts(parts: Iterable[Counts]) -> Counts:
    total: Counts = {name: collections.Counter() for name in FIELD_COLUMNS}
    for part in parts:
        for name, counter in part.items():
            total[name].update(counter)
    return total


def _content_hash(fields: Mapping[str, list[str]]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


@dataclass
class Vocabulary:
    """Token lists per field; `ids(field)` maps token -> id."""

    fields: dict[str, list[str]]
    parent_hash: str | None = None
    min_count: int = 1
    _index: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, tokens in self.fields.items():
            if tuple(tokens[:3]) != SPECIALS:
                raise ValueError(f"vocabulary field {name!r} must start with {SPECIALS}")
            if len(set(tokens)) != len(tokens):
                raise ValueError(f"vocabulary field {name!r} has duplicate tokens")

    @property
    def hash(self) -> str:
        return _content_hash(self.fields)

    def size(self, name: str) -> int:
        return len(self.fields[name])

    def ids(self, name: str) -> dict[str, int]:
        if name not in self._index:
            self._index[name] = {tok: i for i, tok in enumerate(self.fields[name])}
        return self._index[name]

    def calendar_years(self, unknown: int = -1) -> np.ndarray:
        """The calendar year of each year id (int64), `unknown` for the tokens that are not a
        year (the special ones)."""
        return np.array(
            [int(t) if t.lstrip("-").isdigit() else unknown for t in self.fields["year"]],
            dtype=np.int64,
        )

    def encode(self, name: str, values: pa.Array | np.ndarray | list) -> np.ndarray:
        """Ids of `values` in field `name`; unknown values -> `<unk>`, nulls -> `<pad>`.

        Vectorised: integers (years) through a sorted lookup, dictionary arrays through their
        (small) dictionary, strings through an Arrow hash lookup.
        """
        arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            ids = self.encode(name, arr.dictionary)
            indices = arr.indices.fill_null(0).to_numpy(zero_copy_only=False)
            out = ids[indices] if len(ids) else np.zeros(len(arr), np.int32)
            out[arr.is_null().to_numpy(zero_copy_only=False)] = PAD_ID
            return out
        if pa.types.is_integer(arr.type):
            return self._encode_ints(name, arr)
        tokens = pa.array(self.fields[name], pa.string())
        arr = arr.cast(pa.string())
        found = pc.index_in(arr, value_set=tokens)
        ids = found.fill_null(UNK_ID).to_numpy(zero_copy_only=False).astype(np.int32)
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        ids[nulls] = PAD_ID
        return ids

    def _encode_ints(self, name: str, arr: pa.Array) -> np.ndarray:
        key = f"#{name}"
        if key not in self._index:
            pairs = sorted(
                (int(tok), i)
                for i, tok in enumerate(self.fields[name])
                if tok.lstrip("-").isdigit()
            )
            self._index[key] = (
                np.array([p[0] for p in pairs], np.int64),
                np.array([p[1] for p in pairs], np.int32),
            )  # type: ignore[assignment]
        values_sorted, ids_sorted = self._index[key]  # type: ignore[misc]
        values = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        pos = np.clip(np.searchsorted(values_sorted, values), 0, max(len(values_sorted) - 1, 0))
        found = (
            (values_sorted[pos] == values) if len(values_sorted) else np.zeros(len(values), bool)
        )
        out = np.where(found, ids_sorted[pos] if len(ids_sorted) else UNK_ID, UNK_ID).astype(
            np.int32
        )
        out[arr.is_null().to_numpy(zero_copy_only=False)] = PAD_ID
        return out

    def is_extension_of(self, parent: Vocabulary) -> bool:
        """True when every parent field is a prefix of this vocabulary's field."""
        for name, tokens in parent.fields.items():
            mine = self.fields.get(name)
            if mine is None or mine[: len(tokens)] != tokens:
                return False
        return True

    def incompatibility(self, parent: Vocabulary) -> str | None:
        """Why this vocabulary does not extend `parent` (None when it does)."""
        for name, tokens in parent.fields.items():
            mine = self.fields.get(name)
            if mine is None:
                return f"field {name!r} missing"
            for i, tok in enumerate(tokens):
                if i >= len(mine) or mine[i] != tok:
                    got = mine[i] if i < len(mine) else "end of field"
                    return f"field {name!r}: id {i} is {got!r}, parent has {tok!r}"
        return None

    def to_json(self) -> str:
        payload = {
            "format_version": FORMAT_VERSION,
            "hash": self.hash,
            "parent_hash": self.parent_hash,
            "min_count": self.min_count,
            "sizes": {name: len(tokens) for name, tokens in self.fields.items()},
            "fields": self.fields,
        }
        return json.dumps(payload, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "vocab.json") -> Vocabulary:
        payload = json.loads(text)
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{source}: unsupported vocabulary format {payload.get('format_version')!r}"
            )
        vocab = cls(payload["fields"], payload.get("parent_hash"), payload.get("min_count", 1))
        if payload.get("hash") != vocab.hash:
            raise ValueError(f"{source}: content hash does not match its tokens (edited by hand?)")
        return vocab

    def save(self, url: str, storage_options=None) -> None:
        storage.write_bytes_atomic(url, self.to_json().encode(), storage_options)

    @classmethod
    def load(cls, url: str, storage_options=None) -> Vocabulary:
        return cls.from_json(storage.read_text(url, storage_options), storage.redact(url))


def _numeric_tokens(counter: collections.Counter, span: tuple[int, int] | None) -> list[str]:
    years = [int(v) for v in counter]
    if not years and span is None:
        return []
    low = min(years + ([span[0]] if span else []))
    high = max(years + ([span[1]] if span else []))
    return [str(y) for y in range(low, high + 1)]


def _categorical_tokens(counter: collections.Counter, min_count: int) -> list[str]:
    kept = [(tok, n) for tok, n in counter.items() if n >= min_count and tok not in SPECIALS]
    return [tok for tok, _ in sorted(kept, key=lambda kv: (-kv[1], kv[0]))]


def build_vocabulary(
    counts: Counts, *, min_count: int = 1, parent: Vocabulary | None = None
) -> Vocabulary:
    """Build a vocabulary from counts, or extend `parent` with what the counts add.

    Rare categories (fewer than `min_count` occurrences) map to `<unk>`; tokens already in the
    parent are kept whatever their count here.
    """
    if min_count < 1:
        raise ValueError("min_count must be at least 1")
    fields: dict[str, list[str]] = {}
    for name in FIELD_COLUMNS:
        counter = counts.get(name, collections.Counter())
        if name in NUMERIC_FIELDS:
            new = _numeric_tokens(counter, YEAR_SPAN)
        else:
            new = _categorical_tokens(counter, min_count)
        base = list(parent.fields.get(name, SPECIALS)) if parent else list(SPECIALS)
        seen = set(base)
        fields[name] = base + [tok for tok in new if tok not in seen]
    if parent is not None:
        for name, tokens in parent.fields.items():
            fields.setdefault(name, list(tokens))
    return Vocabulary(fields, parent.hash if parent else None, min_count)
