"""The career record: one Arrow schema shared by every reader, the simulator and the sharding job.

Records travel as Arrow tables / record batches (one row per person, list columns per year) so that
tens of millions of people move through the system without a Python object per person.
"""

from __future__ import annotations

import pyarrow as pa

#: Bumped whenever a field is added, removed or changes meaning.
FORMAT_VERSION = 1

#: Job-sequence states that are not occupations (surveys only; resumes have none of them).
UNEMPLOYED = "unemployed"
NOT_IN_LABOR_FORCE = "not_in_labor_force"
IN_EDUCATION = "education"
NON_EMPLOYMENT_STATES = (UNEMPLOYED, NOT_IN_LABOR_FORCE, IN_EDUCATION)

SPLITS = ("train", "valid", "test")

#: Calendar and birth years outside this range are malformed (two-digit years without
#: --year-base, typos, overflow), not data. The vocabulary covers it whole, so year ids stay
#: consecutive and a fine-tuning set never forces a renumbering.
YEAR_RANGE = (1850, 2100)

#: Per-year (list) fields, in record order.
TIME_VARYING_FIELDS = ("years", "jobs", "education", "log_wage", "oracle_logp")
#: Static (one value per person) optional fields.
STATIC_FIELDS = ("location", "gender", "ethnicity", "birth_year", "weight")

RECORD_SCHEMA = pa.schema(
    [
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("years", pa.list_(pa.int32()), nullable=False),
        pa.field("jobs", pa.list_(pa.string()), nullable=False),
        pa.field("education", pa.list_(pa.string())),
        pa.field("log_wage", pa.list_(pa.float32())),
        pa.field("oracle_logp", pa.list_(pa.float32())),
        pa.field("location", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("ethnicity", pa.string()),
        pa.field("birth_year", pa.int32()),
        pa.field("weight", pa.float32()),
        # The input's own split (career-code directories carry one); null means `splits.split_of`.
        pa.field("split", pa.string()),
    ],
    metadata={"career.format_version": str(FORMAT_VERSION)},
)


def empty_table() -> pa.Table:
    """A table with no people and the record schema (what a reader returns when all is quarantined)."""
    return RECORD_SCHEMA.empty_table()


def conform(table: pa.Table) -> pa.Table:
    """Return `table` with exactly the record schema: missing optional columns become nulls.

    Readers build only the columns their input has; this fills the rest so every consumer sees one
    schema. A missing required column is a programming error, hence `KeyError`.
    """
    columns = []
    for field in RECORD_SCHEMA:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        elif not field.nullable:
            raise KeyError(f"record table lacks required column {field.name!r}")
        elif field.name == "weight":
            columns.append(pa.array([1.0] * table.num_rows, field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=RECORD_SCHEMA)
