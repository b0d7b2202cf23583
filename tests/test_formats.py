"""The input-format and layout registries are the single source of names, behaviour and help."""

import ast
import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pytest

from data_shards import formats, writers
from data_shards.formats import ALL_FORMATS, FORMATS, READABLE_FORMATS, describe_formats
from data_shards.inputs import InputSpec
from data_shards.readers import PanelMapping, read
from data_shards.synth.generate import simulate
from data_shards.synth.presets import PRESETS
from data_shards.writers import LAYOUT_NAMES, LAYOUTS, describe_layouts, write_layout

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
