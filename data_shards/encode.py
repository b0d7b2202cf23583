"""Records (Arrow) -> vocabulary ids (numpy), and the inverse, for the shard blocks.

`FieldSet` says which optional fields a dataset carries; every block of a dataset carries the same
ones, so the loader's batches have a fixed set of keys. The sharding job encodes with it
(`shard/write.py`); `block_to_table` decodes a block back, for tests and inspection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_shards.blocks import FLOAT_TOKEN_FIELDS, PERSON_FIELDS, Block, id_dtype
from data_shards.vocab import FIELD_COLUMNS, PAD_ID, Vocabulary

#: Token fields always present.
REQUIRED_TOKEN_FIELDS = ("job", "year")


@dataclass(frozen=True)
class FieldSet:
    """Optional fields present in a dataset (a field with no value anywhere is left out)."""

    education: bool
    log_wage: bool
    oracle_logp: bool
    person_fields: tuple[str, ...]  # subset of PERSON_FIELDS
    weight: bool

    @classmethod
    def of(cls, tables: list[pa.Table]) -> FieldSet:
        def has(column: str) -> bool:
            for t in tables:
                col = t.column(column)
                if pa.types.is_list(col.type):
                    col = pc.list_flatten(col)
                if col.null_count < len(col) and not (
                    pa.types.is_floating(col.type)
                    and pc.all(pc.is_nan(col.drop_null())).as_py() is True
                ):
                    return True
            return False

        weight = any(
            t.num_rows and not pc.all(pc.equal(t.column("weight").fill_null(1.0), 1.0)).as_py()
            for t in tables
        )
        return cls(
            education=has("education"),
            log_wage=has("log_wage"),
            oracle_logp=has("oracle_logp"),
            person_fields=tuple(f for f in PERSON_FIELDS if has(FIELD_COLUMNS[f])),
            weight=weight,
        )

    def token_fields(self) -> tuple[str, ...]:
        return REQUIRED_TOKEN_FIELDS + (("education",) if self.education else ())

    def float_fields(self) -> tuple[str, ...]:
        return tuple(f for f in FLOAT_TOKEN_FIELDS if getattr(self, f))

    def to_dict(self) -> dict:
        return {
            "token_fields": list(self.token_fields()),
            "float_token_fields": list(self.float_fields()),
            "person_fields": list(self.person_fields),
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, payload: dict) -> FieldSet:
        return cls(
            education="education" in payload["token_fields"],
            log_wage="log_wage" in payload["float_token_fields"],
            oracle_logp="oracle_logp" in payload["float_token_fields"],
            person_fields=tuple(payload["person_fields"]),
            weight=bool(payload["weight"]),
        )


def dtypes_for(vocab: Vocabulary, fields: FieldSet) -> dict[str, np.dtype]:
    dtypes = {
        name: id_dtype(vocab.size(name)) for name in fields.token_fields() + fields.person_fields
    }
    dtypes.update({name: np.dtype(np.float32) for name in fields.float_fields()})
    if fields.weight:
        dtypes["weight"] = np.dtype(np.float32)
    return dtypes


def _flat(table: pa.Table, column: str) -> pa.Array:
    """Flattened list values, with a null list standing for a run of nulls of the person's length."""
    values = table.column(column).combine_chunks()
    if values.null_count == 0:
        return pc.list_flatten(values)
    lengths = pc.list_value_length(table.column("years").combine_chunks())
    filled = pc.if_else(
        pc.is_null(values),
        pa.array([[None] * n for n in lengths.to_pylist()], values.type),
        values,
    )
    return pc.list_flatten(filled)


def table_to_ids(
    table: pa.Table, vocab: Vocabulary, fields: FieldSet
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(lengths, arrays) for `encode_block`: ids per token and per person, float32 columns."""
    lengths = (
        pc.list_value_length(table.column("years")).to_numpy(zero_copy_only=False).astype(np.int64)
    )
    arrays: dict[str, np.ndarray] = {}
    for name in fields.token_fields():
        arrays[name] = vocab.encode(name, _flat(table, FIELD_COLUMNS[name]))
    for name in fields.float_fields():
        arrays[name] = (
            _flat(table, name).cast(pa.float32()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        )
    for name in fields.person_fields:
        arrays[name] = vocab.encode(name, table.column(FIELD_COLUMNS[name]))
    if fields.weight:
        arrays["weight"] = (
            table.column("weight").cast(pa.float32()).fill_null(1.0).to_numpy(zero_copy_only=False)
        )
    return lengths, arrays


def block_to_table(block: Block, vocab: Vocabulary) -> pa.Table:
    """Decode a block back to record columns (tokens as strings), for tests and inspection."""
    offsets = pa.array(block.offsets.astype(np.int32))
    out: dict[str, pa.Array] = {"person_id": pa.array(block.person_id, pa.string())}
    for name, column in (("year", "years"), ("job", "jobs"), ("education", "education")):
        if name in block.arrays:
            tokens = pa.array(vocab.fields[name], pa.string()).take(
                pa.array(block.arrays[name].astype(np.int64))
            )
            if name == "year":
                tokens = tokens.cast(pa.int32())
            out[column] = pa.ListArray.from_arrays(offsets, tokens)
    for name in FLOAT_TOKEN_FIELDS:
        if name in block.arrays:
            values = pa.array(block.arrays[name], pa.float32(), from_pandas=True)
            out[name] = pa.ListArray.from_arrays(offsets, values)
    for name in PERSON_FIELDS:
        if name in block.arrays:
            ids = pa.array(block.arrays[name].astype(np.int64))
            tokens = pa.array(vocab.fields[name], pa.string()).take(ids)
            tokens = pc.if_else(pc.equal(ids, PAD_ID), pa.scalar(None, pa.string()), tokens)
            out[FIELD_COLUMNS[name]] = tokens.cast(pa.int32()) if name == "birth_year" else tokens
    if "weight" in block.arrays:
        out["weight"] = pa.array(block.arrays["weight"], pa.float32())
    return pa.table(out)
