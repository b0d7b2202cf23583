"""The input-format and layout registries are the single source of names, behaviour and help."""

import ast
import bz2
import gzip
import json
import lzma
import re
from dataclasses import asdict
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_shards import formats, writers
from data_shards.errors import StructuralError
from data_shards.formats import ALL_FORMATS, FORMATS, READABLE_FORMATS, describe_formats
from data_shards.inputs import InputSpec
from data_shards.readers import PanelMapping, read
from data_shards.readers.lines import index_lines, read_line_bytes
from data_shards.synth.generate import simulate
from data_shards.synth.presets import PRESETS
from data_shards.writers import (
    LAYOUT_NAMES,
    LAYOUTS,
    describe_layouts,
    write_career_code,
    write_layout,
    write_panel,
    write_panel_csv,
    write_resume_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_format_is_complete():
    assert READABLE_FORMATS == ("career-code", "panel", "resume-jsonl")
    assert ALL_FORMATS == ("career-code", "panel", "resume-jsonl", "synth")
    for name, fmt in FORMATS.items():
        assert fmt.name == name and fmt.description
        for part in (fmt.check, fmt.describe, fmt.plan_blocks, fmt.read_block, fmt.digest):
            assert callable(part), (name, part)
        assert fmt.readable == (name != "synth") == callable(fmt.read), name


def test_format_help_is_generated_from_the_registry():
    assert describe_formats(ALL_FORMATS) == (
        "career-code: folder of {train,valid,test}.{job,year,...}; panel: CSV or Parquet "
        "person-year rows; resume-jsonl: one resume per line; synth: the simulator, generated "
        "on the workers"
    )
    assert describe_formats(READABLE_FORMATS).count(";") == 2


def test_unknown_formats_are_refused_with_the_registry_names():
    with pytest.raises(ValueError, match="choose from career-code, panel, resume-jsonl, synth$"):
        InputSpec(format="csv")
    with pytest.raises(ValueError, match="choose from career-code, panel, resume-jsonl$"):
        read("x", "synth")  # the simulator is an input of the job, not a readable file
    with pytest.raises(ValueError, match="--input is required for --format panel"):
        InputSpec(format="panel")
    with pytest.raises(ValueError, match="--people must be positive"):
        InputSpec(format="synth", preset="psid", people=0)


def test_descriptions_stored_in_manifests_do_not_change():
    assert InputSpec(format="synth", preset="psid", seed=4).describe() == {
        "format": "synth",
        "preset": "psid",
        "people": PRESETS["psid"].default_people,
        "seed": 4,
    }
    assert InputSpec(format="career-code", url="s3://u:p@b/cc").describe() == {
        "format": "career-code",
        "url": "s3://b/cc",
    }
    mapping = PanelMapping(occupation="occ")
    panel = InputSpec(format="panel", url="p.csv", panel=mapping).describe()
    assert list(panel) == ["format", "url", "mapping"]
    assert panel["mapping"] == json.loads(json.dumps(asdict(mapping)))
    assert InputSpec(format="resume-jsonl", url="r.jsonl").describe() == {
        "format": "resume-jsonl",
        "url": "r.jsonl",
        "as_of": None,
    }


def test_no_format_chain_outside_the_registry():
    """No module of data_shards compares a `.format` with a literal: it asks the registry."""
    chains = []
    for path in sorted((ROOT / "data_shards").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute):
                literal = any(isinstance(c, ast.Constant) for c in node.comparators)
                if node.left.attr == "format" and literal:
                    chains.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not chains
    assert formats.input_format("panel") is FORMATS["panel"]


def test_every_layout_reads_back_in_its_format(tmp_path):
    assert LAYOUT_NAMES == ("career-code", "parquet", "csv", "resume-jsonl")
    table = pa.Table.from_batches(list(simulate(PRESETS["nlsy79"], 60, 2)))
    files = {"career-code": "cc", "parquet": "p.parquet", "csv": "p.csv", "resume-jsonl": "r.jsonl"}
    for name, layout in LAYOUTS.items():
        assert layout.name == name and layout.description and layout.reads_as in READABLE_FORMATS
        url = str(tmp_path / files[name])
        write_layout(table, url, name)
        back = read(url, layout.reads_as)
        assert sorted(back.table.column("person_id").to_pylist()) == sorted(
            table.column("person_id").to_pylist()
        ), name
    assert describe_layouts().startswith("career-code: career-code folder; parquet: ")
    with pytest.raises(ValueError, match="choose from career-code, parquet, csv, resume-jsonl$"):
        writers.write_layout(table, str(tmp_path / "x"), "xlsx")


# ----------------------------------------------------------------------------- compressed inputs
SUFFIXES = {"gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}


def compressed(data: bytes, codec: str) -> bytes:
    if codec == "zstd":  # written with pyarrow's codec: no `zstandard` package needed
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as stream:
            stream.write(data)
        return sink.getvalue().to_pybytes()
    return {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[codec](data)


def compress(path: Path, codec: str, keep: bool = False) -> Path:
    """`path` compressed beside it (`x.jsonl` -> `x.jsonl.gz`), the plain file removed unless kept."""
    out = path.with_name(path.name + SUFFIXES[codec])
    out.write_bytes(compressed(path.read_bytes(), codec))
    if not keep:
        path.unlink()
    return out


def insert_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines.insert(number - 1, text)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("codec", SUFFIXES)
def test_compressed_inputs_read_as_the_plain_ones(tmp_path, codec):
    # Once read as text: binary lines quarantined, exit 0 and an empty dataset.
    table = pa.Table.from_batches(list(simulate(PRESETS["nlsy79"], 40, 2)))
    write_resume_jsonl(table, str(tmp_path / "r.jsonl"))
    insert_line(tmp_path / "r.jsonl", 7, "not json")
    write_panel_csv(table, str(tmp_path / "p.csv"))
    insert_line(tmp_path / "p.csv", 5, "ragged,row")
    plain_cc, packed_cc = tmp_path / "cc", tmp_path / "cc-packed"
    for folder in (plain_cc, packed_cc):
        write_career_code(table, str(folder))
        years = (folder / "train.year").read_text().splitlines()
        years[2] = "19x9"
        (folder / "train.year").write_text("\n".join(years) + "\n")
    for file in sorted(packed_cc.iterdir()):
        if file.suffix != ".year":  # a folder may mix compressed and plain files
            compress(file, codec)
    suffix = SUFFIXES[codec]
    inputs = [
        ("resume-jsonl", tmp_path / "r.jsonl", compress(tmp_path / "r.jsonl", codec, keep=True)),
        ("panel", tmp_path / "p.csv", compress(tmp_path / "p.csv", codec, keep=True)),
        ("career-code", plain_cc, packed_cc),
    ]
    for fmt, plain, packed in inputs:
        want, got = read(str(plain), fmt), read(str(packed), fmt)
        assert got.table.equals(want.table), fmt
        assert got.report.people_read == want.report.people_read >= 40, fmt
        # the same entries at the same lines, only the file names differ
        shown = [
            (re.sub(re.escape(suffix) + r"(?=:|$)", "", e.source).replace("-packed", ""), e.reason)
            for e in got.quarantine
        ]
        assert shown == [(e.source, e.reason) for e in want.quarantine], fmt
    first = {fmt: read(str(packed), fmt).quarantine.entries[0].source for fmt, _, packed in inputs}
    assert first["resume-jsonl"].endswith(f"r.jsonl{suffix}:7")
    assert first["panel"].endswith(f"p.csv{suffix}:5")
    assert first["career-code"].endswith(f"cc-packed/train.job{suffix}:3")  # the person's line
    # a block of lines from the middle of a compressed file: its decompressed text
    plain_file, packed_file = str(tmp_path / "r.jsonl"), str(tmp_path / f"r.jsonl{suffix}")
    for _, start, stop in index_lines(plain_file, 9).ranges():
        assert read_line_bytes(packed_file, start, stop) == read_line_bytes(plain_file, start, stop)
    assert index_lines(packed_file, 9).sha256 == index_lines(plain_file, 9).sha256


def test_parquet_compresses_its_own_pages_and_a_compressed_parquet_file_is_refused(tmp_path):
    table = pa.Table.from_batches(list(simulate(PRESETS["nlsy79"], 30, 1)))
    write_panel(table, str(tmp_path / "p.parquet"))
    want = read(str(tmp_path / "p.parquet"), "panel").table
    for codec in ("zstd", "gzip", "brotli", "none"):
        pq.write_table(
            pq.read_table(tmp_path / "p.parquet"), tmp_path / f"{codec}.parquet", compression=codec
        )
        assert read(str(tmp_path / f"{codec}.parquet"), "panel").table.equals(want), codec
    packed = compress(tmp_path / "p.parquet", "gzip")
    with pytest.raises(
        StructuralError,
        match=r"p\.parquet\.gz: a gzip-compressed Parquet file is not read: Parquet compresses",
    ):
        read(str(packed), "panel")


def test_damaged_misnamed_and_archived_inputs_are_refused_naming_the_file(tmp_path):
    text = "".join(
        f'{{"id": "p{i}", "jobs": [{{"code": "{i * 7919 % 1000}", "start": "2001"}}]}}\n'
        for i in range(3000)
    ).encode()
    for codec, name in (("gzip", "cut.jsonl.gz"), ("zstd", "bad.jsonl.zst")):
        data = compressed(text, codec)
        (tmp_path / name).write_bytes(data[: len(data) // 2])  # a download cut short
    (tmp_path / "plain.jsonl.gz").write_bytes(text)
    (tmp_path / "r.zip").write_bytes(b"PK\x03\x04")
    (tmp_path / "r.tar.gz").write_bytes(compressed(b"x", "gzip"))
    refused = {
        "cut.jsonl.gz": r"cut\.jsonl\.gz: cannot read it as gzip data, as its name says",
        "plain.jsonl.gz": r"plain\.jsonl\.gz: cannot read it as gzip data.*Not a gzipped file",
        "bad.jsonl.zst": r"bad\.jsonl\.zst: cannot read it as zstd data",
        "r.zip": r"r\.zip: not read: a zip archive",
        "r.tar.gz": r"r\.tar\.gz: not read: a tar archive",
    }
    for name, message in refused.items():
        with pytest.raises(StructuralError, match=message):
            read(str(tmp_path / name), "resume-jsonl")
    cc = tmp_path / "cc"
    write_career_code(pa.Table.from_batches(list(simulate(PRESETS["nlsy79"], 10, 1))), str(cc))
    compress(cc / "train.job", "gzip", keep=True)
    with pytest.raises(StructuralError, match=r"cc: both train\.job and train\.job\.gz"):
        read(str(cc), "career-code")


def test_compressed_inputs_on_every_store(store):
    so = store.storage_options
    table = pa.Table.from_batches(list(simulate(PRESETS["nlsy79"], 20, 3)))
    write_resume_jsonl(table, store.url("r.jsonl"), storage_options=so)
    write_panel_csv(table, store.url("p.csv"), storage_options=so)
    for name, fmt, codec in (("r.jsonl", "resume-jsonl", "gzip"), ("p.csv", "panel", "zstd")):
        fs, path = fsspec.core.url_to_fs(store.url(name), **(so or {}))
        packed = store.url(name + SUFFIXES[codec])
        fs.pipe_file(path + SUFFIXES[codec], compressed(fs.cat_file(path), codec))
        want = read(store.url(name), fmt, storage_options=so).table
        assert read(packed, fmt, storage_options=so).table.equals(want), name
