"""Vocabulary: id layout, ordering, min-count, hashing and prefix-preserving extension."""

import collections
import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_shards.vocab import (
    PAD_ID,
    SPECIALS,
    UNK_ID,
    YEAR_SPAN,
    Vocabulary,
    build_vocabulary,
    count_tokens,
)


def table(jobs, years, **static):
    n = len(jobs)
    cols = {"person_id": [f"p{i}" for i in range(n)], "jobs": jobs, "years": years}
    cols.update(static)
    return pa.table(cols)


def test_layout_frequency_order_and_years():
    t = table(
        [["b", "a", "a"], ["c", "a"]], [[2001, 2002, 2005], [1999, 2000]], location=["CA", None]
    )
    v = build_vocabulary(count_tokens(t))
    assert v.fields["job"][:3] == list(SPECIALS)
    assert v.fields["job"][3:] == ["a", "b", "c"]  # a:3, then b and c tie at 1 -> by code
    years = v.fields["year"][3:]
    assert years[0] == str(YEAR_SPAN[0]) and years[-1] == str(YEAR_SPAN[1])
    ids = v.ids("year")
    assert ids["2000"] == ids["1999"] + 1 and ids["2005"] == ids["2001"] + 4
    assert v.fields["location"] == [*SPECIALS, "CA"]


def test_calendar_years_of_year_ids():
    v = build_vocabulary(count_tokens(table([["a", "b"]], [[2001, 2002]])))
    years = v.calendar_years()
    assert years.dtype == "int64" and len(years) == v.size("year")
    assert list(years[:3]) == [-1, -1, -1]  # the special tokens: `unknown`, -1 by default
    assert list(v.calendar_years(unknown=0)[:3]) == [0, 0, 0]
    assert years[v.ids("year")["2001"]] == 2001 and years[-1] == YEAR_SPAN[1]


def test_min_count_maps_rare_codes_to_unk():
    t = table([["a", "a", "b"]], [[2000, 2001, 2002]])
    v = build_vocabulary(count_tokens(t), min_count=2)
    assert "b" not in v.fields["job"]
    assert list(v.encode("job", ["a", "b", None])) == [3, UNK_ID, PAD_ID]


def test_extension_appends_and_never_renumbers():
    parent = build_vocabulary(count_tokens(table([["a", "b", "b"]], [[2000, 2001, 2002]])))
    child_counts = count_tokens(
        table([["unemployed", "a", "z", "z", "z"]], [[2101, 2102, 2103, 2104, 2105]])
    )
    child = build_vocabulary(child_counts, parent=parent)
    assert child.is_extension_of(parent) and child.incompatibility(parent) is None
    assert child.fields["job"][: len(parent.fields["job"])] == parent.fields["job"]
    assert child.fields["job"][len(parent.fields["job"]) :] == ["z", "unemployed"]
    assert child.parent_hash == parent.hash and child.hash != parent.hash
    # Years beyond the span (readers reject them; the vocabulary still copes) are appended in order.
    added_years = child.fields["year"][len(parent.fields["year"]) :]
    assert added_years == [str(y) for y in range(2101, 2106)]


def test_incompatible_vocabulary_is_detected():
    a = build_vocabulary(count_tokens(table([["a", "a", "b"]], [[2000, 2001, 2002]])))
    b = build_vocabulary(count_tokens(table([["b", "b", "a"]], [[2000, 2001, 2002]])))
    assert not b.is_extension_of(a)
    assert "id 3" in b.incompatibility(a)


def test_json_round_trip_and_tamper_check(tmp_path):
    v = build_vocabulary(count_tokens(table([["a", "b"]], [[2000, 2001]])))
    path = str(tmp_path / "vocab.json")
    v.save(path)
    loaded = Vocabulary.load(path)
    assert loaded.fields == v.fields and loaded.hash == v.hash
    payload = json.loads((tmp_path / "vocab.json").read_text())
    payload["fields"]["job"].append("sneaky")
    (tmp_path / "vocab.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="hash"):
        Vocabulary.load(path)


@settings(deadline=None)  # the first call pays numpy's warm-up
@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 50), min_size=1),
    st.dictionaries(st.sampled_from("efghijkl"), st.integers(1, 50), min_size=1),
)
def test_any_extension_is_a_prefix_superset(first, second):
    parent = build_vocabulary({"job": collections.Counter(first)})
    child = build_vocabulary({"job": collections.Counter(second)}, parent=parent)
    assert child.is_extension_of(parent)
    assert set(child.fields["job"]) == set(SPECIALS) | set(first) | set(second)
