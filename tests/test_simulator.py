"""The career simulator: determinism, preset designs, and the exact oracle.

The oracle is checked against brute-force enumeration on a tiny world: every job sequence of a
short career is enumerated, its probability under each latent type computed step by step, and
P(job_t | history) obtained by summing the joint over types and over all possible futures.
"""

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data_shards.schema import NON_EMPLOYMENT_STATES
from data_shards.splits import resolve_splits
from data_shards.synth import process
from data_shards.synth.generate import CHUNK_PEOPLE, simulate, simulate_chunk, type_log_prior
from data_shards.synth.presets import PRESETS, Preset
from data_shards.synth.world import EDUCATION_LEVELS, STATES, World
from trainer.models.markov import fit_markov

#: simulations of thousands of people
pytestmark = pytest.mark.slow

TINY_WORLD = World.build(num_families=2, ladders=1, levels=2, num_types=3)
TINY = Preset(
    name="tiny",
    default_people=10,
    birth_years=(1975, 1975),
    type_mix=(0.5, 0.3, 0.2, 0, 0, 0, 0, 0),
    education_mix=(0, 0, 0, 1, 0),
    non_employment=True,
    waves=(2000, 2001, 2003),
    ages=(18, 80),
)


def enumerate_joint(world, preset, person):
    """P(sequence | type) for every job sequence over the person's observed years: (K, S), sequences."""
    years = np.array(person["years"])
    T, J = len(years), world.num_jobs
    seqs = np.array(list(itertools.product(range(J), repeat=T)))
    S = len(seqs)
    edu = np.array([EDUCATION_LEVELS.index(e) for e in person["education"]])
    region = np.full(S, STATES[person["location"]])
    female = np.full(S, 1.0 if person["gender"] == "female" else 0.0)
    logp = np.zeros((world.num_types, S))
    spell_start = np.full(S, years[0])
    for t in range(T):
        if t:
            spell_start = (
                np.where(seqs[:, t - 1] == seqs[:, max(t - 2, 0)], spell_start, years[t - 1])
                if t > 1
                else spell_start
            )
        ctx = process.StepContext(
            prev=seqs[:, t - 1] if t else None,
            tenure=(years[t - 1] - spell_start + 1).astype(float) if t else None,
            gap=np.full(S, float(years[t] - years[t - 1])) if t else None,
            year=np.full(S, years[t]),
            age=np.full(S, years[t] - person["birth_year"]),
            education=np.full(S, edu[t]),
            region=region,
            female=female,
        )
        logp += process.log_prob(world, preset, ctx, seqs[:, t])
    return np.exp(logp), seqs


@pytest.fixture(scope="module")
def tiny_people():
    batch = simulate_chunk(TINY, 12, seed=3, chunk=0, world=TINY_WORLD)
    return batch.to_pylist()


def test_tiny_process_is_a_distribution(tiny_people):
    joint, _ = enumerate_joint(TINY_WORLD, TINY, tiny_people[0])
    np.testing.assert_allclose(joint.sum(1), 1.0, rtol=1e-9)


def test_oracle_matches_brute_force_enumeration(tiny_people):
    codes = {c: i for i, c in enumerate(TINY_WORLD.codes)}
    for person in tiny_people:
        joint, seqs = enumerate_joint(TINY_WORLD, TINY, person)
        female = np.array([1.0 if person["gender"] == "female" else 0.0])
        prior = np.exp(type_log_prior(TINY_WORLD, TINY, female))[:, 0]
        marginal = prior @ joint  # (S,): P(sequence), type summed out
        observed = [codes[j] for j in person["jobs"]]
        prefix_prob = [1.0]
        for t in range(len(observed)):
            match = np.all(seqs[:, : t + 1] == observed[: t + 1], axis=1)
            prefix_prob.append(marginal[match].sum())
        want = np.log(np.array(prefix_prob[1:]) / np.array(prefix_prob[:-1]))
        np.testing.assert_allclose(person["oracle_logp"], want, rtol=1e-5, atol=1e-6)


def test_sampler_agrees_with_the_probabilities():
    """Empirical frequencies of whole sequences match the exact probabilities (Pearson chi-square)."""
    n = 30_000
    batches = list(simulate(TINY, n, seed=11, world=TINY_WORLD))
    people = pa.Table.from_batches(batches)
    codes = {c: i for i, c in enumerate(TINY_WORLD.codes)}
    key_cols = ["location", "gender"]
    groups = people.group_by(key_cols).aggregate([("person_id", "count")]).to_pylist()
    J = TINY_WORLD.num_jobs
    expected = np.zeros(J**3)
    for group in groups:
        example = (
            people.filter(
                pc.and_(
                    pc.equal(people["location"], group["location"]),
                    pc.equal(people["gender"], group["gender"]),
                )
            )
            .slice(0, 1)
            .to_pylist()[0]
        )
        joint, _ = enumerate_joint(TINY_WORLD, TINY, example)
        female = np.array([1.0 if example["gender"] == "female" else 0.0])
        prior = np.exp(type_log_prior(TINY_WORLD, TINY, female))[:, 0]
        expected += group["person_id_count"] * (prior @ joint)
    seq_index = np.array(
        [
            np.ravel_multi_index([codes[j] for j in jobs], (J, J, J))
            for jobs in people["jobs"].to_pylist()
        ]
    )
    observed = np.bincount(seq_index, minlength=J**3)
    assert observed[expected == 0].sum() == 0, "the sampler drew a sequence of probability zero"
    cells = expected >= 5
    chi2 = float((((observed - expected) ** 2) / expected)[cells].sum())
    df = int(cells.sum()) - 1
    assert chi2 < df + 5 * np.sqrt(2 * df), f"chi2 {chi2:.1f} with {df} degrees of freedom"


def test_deterministic_by_seed_and_chunk():
    preset = PRESETS["nlsy97"]
    a = simulate_chunk(preset, 500, seed=7, chunk=2)
    b = simulate_chunk(preset, 500, seed=7, chunk=2)
    c = simulate_chunk(preset, 500, seed=7, chunk=3)
    d = simulate_chunk(preset, 500, seed=8, chunk=2)
    assert a.equals(b)
    assert not a.column("jobs").equals(d.column("jobs"))
    assert a.column("person_id")[0].as_py() == f"nlsy97-s7-{2 * CHUNK_PEOPLE:09d}"
    assert not set(a.column("person_id").to_pylist()) & set(c.column("person_id").to_pylist())


def test_any_chunk_can_be_made_alone():
    preset = PRESETS["resumes"]
    people = CHUNK_PEOPLE + 300
    whole = list(simulate(preset, people, seed=1))
    alone = list(simulate(preset, people, seed=1, chunks=[1]))
    assert len(whole) == 2 and whole[1].equals(alone[0])
    assert sum(b.num_rows for b in whole) == people


def _flat(table, column):
    return pc.list_flatten(table.column(column)).to_numpy(zero_copy_only=False)


@pytest.mark.parametrize("name", ["nlsy79", "nlsy97", "psid"])
def test_survey_design(name):
    preset = PRESETS[name]
    table = pa.Table.from_batches(list(simulate(preset, 3000, seed=0)))
    jobs, years = _flat(table, "jobs"), _flat(table, "years")
    for state in NON_EMPLOYMENT_STATES:
        assert (jobs == state).mean() > 0.005, state
    assert set(np.unique(years)) <= set(preset.waves)
    births = table.column("birth_year").to_numpy()
    assert births.min() >= preset.birth_years[0] and births.max() <= preset.birth_years[1]
    assert table.column("gender").null_count == 0 and table.column("ethnicity").null_count == 0
    wages = _flat(table, "log_wage")
    employed = ~np.isin(jobs, NON_EMPLOYMENT_STATES)
    assert np.all(np.isnan(wages[~employed].astype(float)))
    assert 0.8 < np.mean(~np.isnan(wages[employed].astype(float))) < 0.95
    for row in table.slice(0, 200).to_pylist():
        assert all(b > a for a, b in zip(row["years"], row["years"][1:], strict=False))
        levels = [EDUCATION_LEVELS.index(e) for e in row["education"]]
        assert levels == sorted(levels)


def test_resume_design():
    table = pa.Table.from_batches(list(simulate(PRESETS["resumes"], 5000, seed=0)))
    jobs = _flat(table, "jobs")
    assert not np.isin(jobs, NON_EMPLOYMENT_STATES).any()
    assert table.column("gender").null_count == table.num_rows
    assert pc.all(pc.equal(table.column("weight"), 1.0)).as_py()
    mean_len = len(jobs) / table.num_rows
    assert 8.5 < mean_len < 11.5  # the paper's resumes: ~9.75 years each
    gaps = np.concatenate([np.diff(y) for y in table.column("years").to_pylist() if len(y) > 1])
    assert 0.03 < np.mean(gaps > 1) < 0.3  # randomly unlisted years


def test_oracle_values_are_log_probabilities():
    table = pa.Table.from_batches(list(simulate(PRESETS["psid"], 2000, seed=0)))
    oracle = _flat(table, "oracle_logp").astype(float)
    assert np.all(np.isfinite(oracle)) and np.all(oracle <= 1e-6)


@pytest.mark.parametrize("name", ["nlsy79", "nlsy97", "psid"])
def test_markov_is_at_least_15_percent_above_the_oracle(name):
    preset = PRESETS[name]
    table = pa.Table.from_batches(list(simulate(preset, preset.default_people, seed=0)))
    split = resolve_splits(table).to_numpy(zero_copy_only=False)
    train, valid, test = (table.filter(pa.array(split == s)) for s in ("train", "valid", "test"))
    markov = fit_markov(train, valid).perplexity(test)
    oracle = float(np.exp(-np.mean(_flat(test, "oracle_logp").astype(float))))
    assert markov >= 1.15 * oracle, (markov, oracle)
