"""Generate simulated careers as Arrow record batches, with the exact oracle log-probability.

Deterministic from (preset, seed, chunk): a corpus of N people is cut into chunks of
`CHUNK_PEOPLE` people, and chunk c draws from its own random stream, so any Ray worker can make any
chunk of a 24M-person corpus alone, with no overlap and the same bytes on rerun.

Order of draws per person: statics and final education; the latent type; which years are observed
(independently of jobs: the observation design comes first and transitions act on observed years
only); then jobs year by year, sampled from the true type, while a forward filter over all types
gives log P(job_t | observed history) with the type summed out (the oracle).
All work is vectorised across people: people are sorted by length so the people still active at
position t are a prefix of the arrays.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data_shards.schema import RECORD_SCHEMA
from data_shards.synth import process
from data_shards.synth.presets import Preset
from data_shards.synth.world import (
    EDUCATION_COMPLETION_AGE,
    EDUCATION_LEVELS,
    ETHNICITIES,
    GENDERS,
    STATES,
    World,
)

#: People per chunk: fixed, so the corpus does not depend on how work is spread over workers.
CHUNK_PEOPLE = 16_384

_DEFAULT_WORLD: World | None = None


def default_world() -> World:
    global _DEFAULT_WORLD
    if _DEFAULT_WORLD is None:
        _DEFAULT_WORLD = World.build()
    return _DEFAULT_WORLD


def chunk_sizes(people: int, chunk_people: int = CHUNK_PEOPLE) -> list[int]:
    """People in each chunk of a corpus of `people`."""
    if people < 0:
        raise ValueError("people must be non-negative")
    full, rest = divmod(people, chunk_people)
    return [chunk_people] * full + ([rest] if rest else [])


def _rng(preset: Preset, seed: int, chunk: int) -> np.random.Generator:
    key = zlib.crc32(preset.name.encode())
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, chunk, key])))


@dataclass
class People:
    """Per-person draws that do not depend on jobs."""

    birth_year: np.ndarray
    female: np.ndarray
    ethnicity: np.ndarray
    state: np.ndarray
    region: np.ndarray
    final_education: np.ndarray
    graduate_delay: np.ndarray
    weight: np.ndarray


def _draw_people(preset: Preset, n: int, rng: np.random.Generator) -> People:
    lo, hi = preset.birth_years
    state_codes = list(STATES)
    state_weights = np.random.default_rng(7).dirichlet(np.full(len(state_codes), 2.0))
    state = rng.choice(len(state_codes), size=n, p=state_weights)
    region = np.array([STATES[c] for c in state_codes])[state]
    edu_mix = np.asarray(preset.education_mix) / np.sum(preset.education_mix)
    eth_mix = np.asarray(preset.ethnicity_mix) / np.sum(preset.ethnicity_mix)
    return People(
        birth_year=rng.integers(lo, hi + 1, n),
        female=(rng.random(n) < 0.5).astype(float),
        ethnicity=rng.choice(len(ETHNICITIES), size=n, p=eth_mix),
        state=state,
        region=region,
        final_education=rng.choice(len(EDUCATION_LEVELS), size=n, p=edu_mix),
        graduate_delay=rng.integers(0, 5, n),
        weight=np.exp(rng.normal(0.0, 0.3, n)) if preset.survey_weights else np.ones(n),
    )


def type_log_prior(world: World, preset: Preset, female: np.ndarray) -> np.ndarray:
    """log P(type | observed statics): (K, n). Gender tilts the mix where it is recorded."""
    mix = np.asarray(preset.type_mix[: world.num_types], dtype=float)
    logits = np.log(mix / mix.sum())[:, None] + 0.0 * female[None, :]
    if preset.demographics:
        logits = logits + np.array([t.female_tilt for t in world.types])[:, None] * female
    return logits - logsumexp_types(logits)


def logsumexp_types(x: np.ndarray) -> np.ndarray:
    """log sum exp over the type axis (0); faster than `np.logaddexp.reduce`."""
    top = x.max(0)
    return top + np.log(np.exp(x - top).sum(0))


def _education_at(people: People, age: np.ndarray) -> np.ndarray:
    """Highest level completed by `age` (broadcast over a (n, T) age array)."""
    completion = np.broadcast_to(
        EDUCATION_COMPLETION_AGE, (len(people.birth_year), len(EDUCATION_LEVELS))
    ).copy()
    completion[:, -1] += people.graduate_delay
    level = np.zeros(age.shape, dtype=np.int64)
    for lvl in range(1, len(EDUCATION_LEVELS)):
        reached = (age >= completion[:, lvl : lvl + 1]) & (people.final_education[:, None] >= lvl)
        level += reached
    return level


def _observation_mask(
    preset: Preset, people: People, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Calendar years and which of them each person is observed in: (Y,), (n, Y) bool."""
    n = len(people.birth_year)
    if preset.is_survey:
        calendar = np.asarray(preset.waves)
        age = calendar[None, :] - people.birth_year[:, None]
        eligible = (age >= preset.ages[0]) & (age <= preset.ages[1])
        wave_no = np.cumsum(eligible, axis=1)  # 1 at the first eligible wave
        dropout = rng.geometric(preset.attrition, n) if preset.attrition > 0 else np.full(n, 10**6)
        kept = eligible & (wave_no <= dropout[:, None])
        missed = rng.random(kept.shape) < preset.missed_wave
        mask = kept & (~missed | (wave_no == 1))
        return calendar, mask
    first = min(preset.birth_years[0] + 16, preset.collection_years[0])
    calendar = np.arange(first, preset.collection_years[1] + 1)
    completion = EDUCATION_COMPLETION_AGE[people.final_education] + np.where(
        people.final_education == len(EDUCATION_LEVELS) - 1, people.graduate_delay, 0
    )
    career_start = people.birth_year + np.maximum(completion, 17) + rng.integers(0, 3, n)
    collected = rng.integers(preset.collection_years[0], preset.collection_years[1] + 1, n)
    listed = 1 + rng.poisson(preset.listed_years_mean - 1, n)
    start = np.minimum(np.maximum(career_start, collected - listed + 1), collected)
    in_window = (calendar[None, :] >= start[:, None]) & (calendar[None, :] <= collected[:, None])
    unlisted = rng.random(in_window.shape) < preset.unlisted_year
    mask = in_window & (~unlisted | (calendar[None, :] == start[:, None]))
    return calendar, mask


def _pack(mask: np.ndarray, calendar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-pack observed years: dense (n, T) years (0 = none) and lengths (n,)."""
    lengths = mask.sum(1)
    order = np.argsort(~mask, axis=1, kind="stable")
    T = int(lengths.max(initial=0))
    years = np.where(np.arange(T)[None, :] < lengths[:, None], calendar[order[:, :T]], 0)
    return years, lengths


def simulate_chunk(
    preset: Preset, people: int, seed: int, chunk: int, world: World | None = None
) -> pa.RecordBatch:
    """Chunk `chunk` (holding `people` people) of the corpus (preset, seed) as a record batch."""
    world = world or default_world()
    rng = _rng(preset, seed, chunk)
    n = people
    who = _draw_people(preset, n, rng)
    log_prior = type_log_prior(world, preset, who.female)
    prior = np.exp(log_prior)
    types = (rng.random(n)[None, :] > np.cumsum(prior, 0)).sum(0)
    types = np.minimum(types, world.num_types - 1)
    calendar, mask = _observation_mask(preset, who, rng)
    years, lengths = _pack(mask, calendar)
    T = years.shape[1]
    age = years - who.birth_year[:, None]
    education = _education_at(who, age)

    # Sort by length, longest first: people active at position t are then a prefix.
    order = np.argsort(-lengths, kind="stable")
    active_counts = (lengths[order][None, :] > np.arange(T)[:, None]).sum(1)
    s_years, s_age, s_edu = years[order], age[order], education[order]
    s_region, s_female, s_types = who.region[order], who.female[order], types[order]
    jobs = np.zeros((n, T), dtype=np.int64)
    oracle = np.zeros((n, T))
    spell_start = np.zeros(n, dtype=np.int64)
    log_post = log_prior[:, order]

    for t in range(T):
        m = int(active_counts[t])
        if m == 0:
            break
        ctx = process.StepContext(
            prev=jobs[:m, t - 1] if t else None,
            tenure=(s_years[:m, t - 1] - spell_start[:m] + 1).astype(float) if t else None,
            gap=(s_years[:m, t] - s_years[:m, t - 1]).astype(float) if t else None,
            year=s_years[:m, t],
            age=s_age[:m, t],
            education=s_edu[:m, t],
            region=s_region[:m],
            female=s_female[:m] if preset.demographics else np.zeros(m),
        )
        logits = process.stay_and_move_logits(world, preset, ctx)
        job = process.sample(world, preset, ctx, s_types[:m], rng, logits)
        lp = process.log_prob(world, preset, ctx, job, logits)  # (K, m)
        joint = log_post[:, :m] + lp
        marginal = logsumexp_types(joint)
        oracle[:m, t] = marginal
        log_post[:, :m] = joint - marginal
        if t:
            spell_start[:m] = np.where(job == jobs[:m, t - 1], spell_start[:m], s_years[:m, t])
        else:
            spell_start[:m] = s_years[:m, t]
        jobs[:m, t] = job

    unsort = np.empty_like(order)
    unsort[order] = np.arange(n)
    jobs, oracle = jobs[unsort], oracle[unsort]
    log_wage = _wages(world, preset, who, types, years, jobs, education, lengths, rng)
    return _to_batch(
        world, preset, seed, chunk, who, years, jobs, education, log_wage, oracle, lengths
    )


def _wages(world, preset, who, types, years, jobs, education, lengths, rng) -> np.ndarray | None:
    """Log wages: occupation, level, tenure, type, education and year (`presets.WageDesign`, which
    may add a penalty per earlier year out of work and a gender gap); NaN when not employed.
    Terms a design leaves at zero are not added, so the frozen presets keep their exact bytes."""
    if not preset.wages:
        return None
    design = preset.wage_design
    n, T = jobs.shape
    is_occ = jobs < world.num_occupations
    fam = np.where(is_occ, world.family_of[jobs], 0)
    lvl = np.where(is_occ, world.level_of[jobs], 0)
    tenure = np.ones((n, T))
    for t in range(1, T):
        same = jobs[:, t] == jobs[:, t - 1]
        tenure[:, t] = np.where(same, tenure[:, t - 1] + (years[:, t] - years[:, t - 1]), 1)
    type_wage = np.array([t.wage for t in world.types])[types][:, None]
    if design.type_effect != 1.0:
        type_wage = design.type_effect * type_wage
    wage = (
        2.0
        + world.family_wage[fam]
        + 0.09 * lvl
        + 0.08 * education
        + design.tenure * np.log(np.maximum(tenure, 1))
        + type_wage
        + 0.01 * (years - 1990)
        + rng.normal(0.0, 0.3, (n, T))
    )
    if design.scar:
        out_of_work = (jobs == world.unemployed_id) | (jobs == world.nilf_id)
        earlier = np.cumsum(out_of_work, axis=1) - out_of_work  # before year t, not at it
        wage = wage - design.scar * earlier
    if design.female_gap:
        wage = wage + design.female_gap * who.female[:, None]
    missing = ~is_occ | (rng.random((n, T)) < preset.wage_missing)
    return np.where(missing, np.nan, wage)


def _list_array(dense: np.ndarray, valid: np.ndarray, offsets: pa.Array, value_type) -> pa.Array:
    values = pa.array(dense[valid], type=value_type, from_pandas=True)
    return pa.ListArray.from_arrays(offsets, values)


def _to_batch(world, preset, seed, chunk, who, years, jobs, education, log_wage, oracle, lengths):
    n, T = jobs.shape
    valid = np.arange(T)[None, :] < lengths[:, None]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    codes = pa.array(world.codes, pa.string())
    edu_names = pa.array(EDUCATION_LEVELS, pa.string())
    first = chunk * CHUNK_PEOPLE
    person_id = pa.array([f"{preset.name}-s{seed}-{first + i:09d}" for i in range(n)], pa.string())
    columns = {
        "person_id": person_id,
        "years": _list_array(years, valid, offsets, pa.int32()),
        "jobs": pa.ListArray.from_arrays(offsets, codes.take(pa.array(jobs[valid]))),
        "education": pa.ListArray.from_arrays(offsets, edu_names.take(pa.array(education[valid]))),
        "log_wage": (
            _list_array(log_wage, valid, offsets, pa.float32())
            if log_wage is not None
            else pa.nulls(n, pa.list_(pa.float32()))
        ),
        "oracle_logp": _list_array(oracle, valid, offsets, pa.float32()),
        "location": pa.array(list(STATES), pa.string()).take(pa.array(who.state)),
        "gender": (
            pa.array(GENDERS, pa.string()).take(pa.array(who.female.astype(np.int64)))
            if preset.demographics
            else pa.nulls(n, pa.string())
        ),
        "ethnicity": (
            pa.array(ETHNICITIES, pa.string()).take(pa.array(who.ethnicity))
            if preset.demographics
            else pa.nulls(n, pa.string())
        ),
        "birth_year": pa.array(who.birth_year, pa.int32()),
        "weight": pa.array(who.weight, pa.float32()),
        "split": pa.nulls(n, pa.string()),
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=RECORD_SCHEMA)


def simulate(
    preset: Preset,
    people: int,
    seed: int = 0,
    chunks: list[int] | None = None,
    world: World | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of the corpus (preset, people, seed), one per chunk (all chunks by default)."""
    sizes = chunk_sizes(people)
    for chunk in chunks if chunks is not None else range(len(sizes)):
        yield simulate_chunk(preset, sizes[chunk], seed, chunk, world)
